"""verl's real actor engine in this process, fed batches the way verl's worker feeds it: the doctor's
and the engine tests' one way to build an engine, a batch and read its per-sample outputs.

The engine is the one verl's EngineRegistry resolves (VGPOFSDPEngineWithLMHead through our plugin),
FSDP2 over the process group of the caller (`init_process_group`), built from the model directory
like a worker's (`HFModelConfig`, `FSDPEngineConfig`). On CPU the packed layouts attend through
verl's flash-attention code on the torch kernels of vgpo_verl.cpu.packed_kernels (installed by
`init_process_group`).
"""

from __future__ import annotations

import functools
import os
import socket

import torch

from vgpo_verl.doctor.tiny_models import Sample, position_ids


def free_port() -> int:
    """A TCP port nobody listens on, for the process group's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_process_group(device: str, rank: int = 0, world_size: int = 1, port: int | None = None) -> None:
    """The process group verl's engine runs in (gloo on CPU, nccl on CUDA); on CPU also verl's CPU
    platform (vgpo_verl.cpu.enable) and the torch kernels. Call before importing verl's engine.
    port: the rendezvous port every rank shares (a free one for a single rank)."""
    port = free_port() if port is None else port
    os.environ.update(MASTER_ADDR=os.environ.get("MASTER_ADDR", "127.0.0.1"), MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    if device == "cpu":
        import vgpo_verl.cpu as cpu

        cpu.enable()
        from verl.plugin.platform import get_platform

        if get_platform().device_name != "cpu":
            raise RuntimeError(f"expected verl's cpu platform, got {get_platform().device_name!r}")
        from vgpo_verl.cpu import packed_kernels

        packed_kernels.install()
    torch.distributed.init_process_group("gloo" if device == "cpu" else "nccl", rank=rank, world_size=world_size)
    import vgpo_verl.plugin  # noqa: F401  (what verl's entry point does on `import verl`: registers our engine)


def build_engine(model_dir: str, remove_padding: bool, sp: int = 1, lora: tuple = (), device: str = "cpu",
                 backend: str = "fsdp2"):
    """verl's actor engine for the model, resolved by verl's EngineRegistry as a worker would.

    backend: "fsdp2", or "veomni" (verl's VeOmni engine; the `veomni` package must be importable).
    On CPU, fp32 throughout; packed FSDP layouts attend through vgpo_verl.cpu.packed_kernels, the padded
    one and VeOmni's through sdpa, VeOmni's experts through its eager loop and its Qwen3.5 linear
    attention through vgpo_verl.cpu.veomni_kernels. On CUDA, verl's defaults:
    flash-attention 2 and bf16 compute (over fp32 weights), VeOmni's fused experts.
    lora: (key, value) pairs of HFModelConfig's LoRA fields (lora_rank, lora_adapter_path,
    exclude_modules, ...): verl's own LoRA path (PEFT).
    """
    if backend == "veomni":
        return _build_veomni_engine(model_dir, remove_padding, sp, device)
    from verl.workers.config import FSDPEngineConfig, FSDPOptimizerConfig, HFModelConfig

    from vgpo_verl.cpu.packed_kernels import CPU_ATTENTION

    if device == "cpu":
        override = {"attn_implementation": CPU_ATTENTION if remove_padding or sp > 1 else "sdpa"}
        precision = {"param_dtype": "fp32", "reduce_dtype": "fp32", "buffer_dtype": "fp32"}
    else:
        override, precision = {}, {"param_dtype": "bf16", "reduce_dtype": "fp32", "buffer_dtype": "fp32"}
    model_config = HFModelConfig(path=model_dir, load_tokenizer=False, use_remove_padding=remove_padding,
                                 override_config=override, **dict(lora))
    engine_config = FSDPEngineConfig(
        # The actor's engine (forward_only would also pin CPU-offloaded memory, impossible without a GPU).
        strategy="fsdp2", forward_only=False, ulysses_sequence_parallel_size=sp, model_dtype="fp32",
        mixed_precision=precision, use_torch_compile=False,
    )
    return _new_engine("fsdp2", model_config, engine_config, FSDPOptimizerConfig(lr=1e-6))


def _new_engine(backend: str, model_config, engine_config, optimizer_config):
    """The language-model engine verl's EngineRegistry resolves for `backend`, initialised (as a worker does)."""
    from verl.workers.config.checkpoint import CheckpointConfig
    from verl.workers.engine import EngineRegistry

    engine = EngineRegistry.new(model_type="language_model", backend=backend, model_config=model_config,
                                engine_config=engine_config, optimizer_config=optimizer_config,
                                checkpoint_config=CheckpointConfig())
    engine.initialize()
    return engine


def _build_veomni_engine(model_dir: str, remove_padding: bool, sp: int, device: str):
    """verl's VeOmni engine (build_engine's backend="veomni"). VeOmni builds on the meta device and
    materialises through FSDP2, so on CPU it needs at least 2 ranks (with one it asks for a GPU); a
    single CUDA rank builds on the GPU instead (VeOmni then skips FSDP)."""
    import verl.workers.engine.veomni.transformer_impl as veomni_impl
    from verl.workers.config import HFModelConfig, VeOmniEngineConfig, VeOmniOptimizerConfig

    cpu = device == "cpu"
    kernels = {"init_device": "cuda"} if not cpu and torch.distributed.get_world_size() == 1 else {}
    if cpu:  # verl passes VeOmni only `enable`, whose param_dtype is bf16; fp32 here, as the FSDP engine's
        from vgpo_verl.cpu import veomni_kernels

        veomni_impl.MixedPrecisionConfig = functools.partial(veomni_impl.MixedPrecisionConfig, param_dtype="float32")
        veomni_kernels.install()
        kernels = {"attn_implementation": "sdpa", "moe_implementation": "eager",
                   "causal_conv1d_implementation": veomni_kernels.KERNEL,
                   "chunk_gated_delta_rule_implementation": veomni_kernels.KERNEL}
    engine_config = VeOmniEngineConfig(strategy="veomni", forward_only=False, ulysses_parallel_size=sp,
                                       use_torch_compile=False, mixed_precision=True, **kernels)
    engine = _new_engine("veomni", HFModelConfig(path=model_dir, load_tokenizer=False, use_remove_padding=remove_padding),
                         engine_config, VeOmniOptimizerConfig(lr=1e-6))
    if cpu:
        engine._autocast_dtype = torch.float32  # FSDPEngineWithLMHead.forward_step's autocast, off as in fp32 FSDP
    return engine


def build_batch(model, samples: list[Sample], legacy_layout: bool = False, **flags):
    """The TensorDict verl's worker hands to engine.infer_batch: unpadded nested fields per sample (v1
    trainer), or with legacy_layout the legacy trainer's padded batch through verl's own
    `left_right_2_no_padding` (prompts left-, responses right-padded; response_mask with a masked
    tool-like token inside each response longer than 2, so it cannot stand for the response length).

    model: a plain HF model of the family, for `get_rope_index` (position ids (4, L) per sample).
    flags: non-tensor fields of the old-log-prob pass (vgpo_score, vppo_perturb, ...).
    """
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import left_right_2_no_padding

    rows = []
    max_prompt = max(len(s.input_ids) - s.response_len for s in samples)
    max_response = max(s.response_len for s in samples)
    for sample in samples:
        row = {"multi_modal_inputs": sample.visual_kwargs() or None}
        positions = position_ids(model, sample)
        if not legacy_layout:
            row.update(input_ids=sample.input_ids, position_ids=positions,
                       loss_mask=torch.ones(len(sample.input_ids), dtype=torch.long),
                       response_mask=torch.ones(sample.response_len, dtype=torch.long))
        else:
            prompt_len, response_len = len(sample.input_ids) - sample.response_len, sample.response_len
            left, right = max_prompt - prompt_len, max_response - response_len
            valid = torch.cat([torch.zeros(left), torch.ones(prompt_len + response_len), torch.zeros(right)]).long()
            input_ids = torch.zeros(len(valid), dtype=torch.long)
            input_ids[valid.bool()] = sample.input_ids
            padded_positions = torch.zeros(positions.shape[0], len(valid), dtype=torch.long)
            padded_positions[:, valid.bool()] = positions
            response_mask = valid[max_prompt:].clone()
            if response_len > 2:
                response_mask[1] = 0
            row.update(prompts=input_ids[:max_prompt], responses=input_ids[max_prompt:], input_ids=input_ids,
                       attention_mask=valid, position_ids=padded_positions, response_mask=response_mask)
        rows.append(row)
    batch = tu.list_of_dict_to_tensordict(rows)
    if legacy_layout:
        batch = left_right_2_no_padding(batch)
    else:  # the TransferQueue hands the worker every per-sample tensor nested, equal lengths too
        for key, value in batch.items():
            if isinstance(value, torch.Tensor) and not value.is_nested:
                batch[key] = torch.nested.as_nested_tensor(list(value.unbind()), layout=torch.jagged)
    tu.assign_non_tensor(batch, temperature=1.0, compute_loss=False, calculate_entropy=True, **flags)
    return batch


def infer_batch(engine, batch, remove_padding: bool, dynamic_bsz: bool = False, max_token_len: int = 4096,
                micro_batch_size: int = 2) -> dict:
    """engine.infer_batch on `batch` in the given layout: verl's own output {"model_output" (nested
    tensors), "loss", "metrics"}."""
    from verl.utils import tensordict_utils as tu

    tu.assign_non_tensor(batch, use_remove_padding=remove_padding, use_dynamic_bsz=dynamic_bsz,
                         max_token_len_per_gpu=max_token_len, micro_batch_size_per_gpu=micro_batch_size,
                         use_fused_kernels=False)
    with engine.eval_mode():
        return engine.infer_batch(batch)


def infer(engine, batch, remove_padding: bool, dynamic_bsz: bool = False, max_token_len: int = 4096,
          micro_batch_size: int = 2) -> tuple[dict[str, list[torch.Tensor]], dict]:
    """infer_batch, its outputs split per sample: ({model-output key: one CPU tensor per sample}, the
    pass's metrics)."""
    output = infer_batch(engine, batch, remove_padding, dynamic_bsz, max_token_len, micro_batch_size)
    outputs = {k: [t.detach().cpu().clone() for t in v.unbind()] for k, v in output["model_output"].items()}
    return outputs, output["metrics"]


def run_layouts(model_dir: str, samples: list[Sample], layouts, flags: dict, lora: tuple = (), device: str = "cpu",
                backend: str = "fsdp2") -> tuple[str, dict]:
    """In this process group (`init_process_group`): per (name, remove_padding, dynamic_bsz) layout, the
    engine built, `samples` inferred with `flags`, dynamic batching cut at the longest sample. Returns
    (the name of the module VGPO's layer -1 hooks, {layout name: per-sample outputs as `infer` gives})."""
    import gc

    import transformers

    from vgpo_verl.methods.scoring import resolve_layer

    with torch.device("meta"):  # get_rope_index reads the config only
        positions_model = transformers.AutoModelForImageTextToText.from_config(
            transformers.AutoConfig.from_pretrained(model_dir))
    max_tokens = max(len(s.input_ids) for s in samples)  # dynamic batching then cuts several micro-batches
    scored, results = "", {}
    for layout, remove_padding, dynamic in layouts:
        engine = build_engine(model_dir, remove_padding, lora=lora, device=device, backend=backend)
        layer = resolve_layer(engine.module, -1)
        scored = next(n for n, m in engine.module.named_modules() if m is layer)
        batch = build_batch(positions_model, samples, **flags)
        results[layout] = infer(engine, batch, remove_padding, dynamic, max_tokens)[0]
        del engine, batch
        gc.collect()
    return scored, results


def run_layouts_on_ranks(world_size: int, log_dir: str, *args, **kwargs) -> tuple[str, dict]:
    """`run_layouts` on `world_size` spawned CPU gloo ranks (VeOmni on CPU needs 2); each rank's output
    goes to `log_dir`/rank<r>.log; rank 0's result is returned."""
    import torch.multiprocessing as mp

    out_path = os.path.join(log_dir, "rank0_result.pt")
    try:
        mp.spawn(_layouts_rank, args=(world_size, free_port(), log_dir, out_path, args, kwargs), nprocs=world_size,
                 join=True)
    except mp.ProcessRaisedException as error:  # its message is the rank's traceback: name the error itself
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise RuntimeError(f"rank {error.error_index}: {lines[-1] if lines else error}") from error
    return torch.load(out_path)


def _layouts_rank(rank: int, world_size: int, port: int, log_dir: str, out_path: str, args, kwargs) -> None:
    with open(os.path.join(log_dir, f"rank{rank}.log"), "w") as log:
        os.dup2(log.fileno(), 1)  # verl and VeOmni print and log at length: kept out of the caller's terminal
        os.dup2(log.fileno(), 2)
        torch.set_num_threads(1)
        init_process_group("cpu", rank, world_size, port)
        try:
            result = run_layouts(*args, **kwargs)
            if rank == 0:
                torch.save(result, out_path)
        finally:
            torch.distributed.destroy_process_group()
