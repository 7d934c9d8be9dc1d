"""Run verl's real FSDP engine (as resolved by verl's EngineRegistry) on CPU ranks, for test_engine.

Each rank is a fresh spawned process (torch.multiprocessing), so verl's class-level monkey patches
of the transformers models never leak into the test process that computes the plain reference.
"""

from __future__ import annotations

import os
import socket

import torch

from _scoring_utils import Sample, position_ids_4d, visual_kwargs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def enable_cpu_platform() -> None:
    """verl on CPU through the demo helper's platform (vgpo_verl.cpu.enable())."""
    import vgpo_verl.cpu as cpu

    cpu.enable()
    from verl.plugin.platform import get_platform

    platform = get_platform()
    assert platform.device_name == "cpu", f"expected verl's cpu platform, got {platform.device_name!r}"


def install_torch_varlen_attention() -> None:
    """flash-attn does not exist on CPU: give verl's Qwen2-VL attention a plain-torch kernel.

    Only the kernel is replaced (block-diagonal causal softmax attention over the packed segments);
    verl's own remove-padding and Ulysses all-to-all code around it runs unchanged.
    """
    import verl.models.transformers.qwen2_vl as qwen2_vl

    def varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None, dropout_p=0.0,
               softmax_scale=None, causal=True, **_):
        total = q.shape[0]
        positions = torch.arange(total, device=q.device)
        segment = torch.searchsorted(cu_seqlens_q[1:].long(), positions, right=True)
        mask = segment[:, None] == segment[None, :]
        if causal:
            mask &= positions[None, :] <= positions[:, None]
        out = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask, scale=softmax_scale
        )
        return out.transpose(0, 1)

    def dense(q, k, v, attention_mask, query_length, is_causal=True, **_):
        out = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=is_causal
        )
        return out.transpose(1, 2)

    def keep_dtype(query, key, value, target_dtype=None):  # flash-attn needs half precision; torch does not
        return query, key, value

    qwen2_vl.fa_peft_integration_check = keep_dtype
    qwen2_vl.flash_attn_varlen_func = varlen
    qwen2_vl._flash_attention_forward = dense
    qwen2_vl._flash_supports_window_size = False
    qwen2_vl._flash_supports_deterministic = False
    qwen2_vl._flash_use_top_left_mask = False


def build_batch(model, samples: list[Sample], legacy_layout: bool = False, **flags):
    """The TensorDict verl's worker hands to engine.infer_batch: unpadded nested fields per sample (v1
    trainer; nested whatever the lengths, as the TransferQueue packs them), or with legacy_layout the legacy trainer's padded batch through verl's own
    `left_right_2_no_padding` (prompts left-, responses right-padded; response_mask with a masked
    tool-like token inside each response longer than 2, so it cannot stand for the response length)."""
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import left_right_2_no_padding

    rows = []
    max_prompt = max(len(s.input_ids) - s.response_len for s in samples)
    max_response = max(s.response_len for s in samples)
    for sample in samples:
        row = {"multi_modal_inputs": visual_kwargs(sample) or None}
        positions = position_ids_4d(model, sample)
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
            position_ids = torch.zeros(positions.shape[0], len(valid), dtype=torch.long)
            position_ids[:, valid.bool()] = positions
            response_mask = valid[max_prompt:].clone()
            if response_len > 2:
                response_mask[1] = 0
            row.update(prompts=input_ids[:max_prompt], responses=input_ids[max_prompt:], input_ids=input_ids,
                       attention_mask=valid, position_ids=position_ids, response_mask=response_mask)
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


def build_engine(model_dir: str, remove_padding: bool, sp: int):
    """verl's actor engine for the model, resolved by verl's EngineRegistry as a worker would."""
    from verl.workers.config import FSDPEngineConfig, FSDPOptimizerConfig, HFModelConfig
    from verl.workers.config.checkpoint import CheckpointConfig
    from verl.workers.engine import EngineRegistry

    model_config = HFModelConfig(
        path=model_dir, load_tokenizer=False, use_remove_padding=remove_padding,
        override_config={"attn_implementation": "sdpa"},
    )
    engine_config = FSDPEngineConfig(
        # The actor's engine (forward_only would also pin CPU-offloaded memory, impossible without a GPU).
        strategy="fsdp2", forward_only=False, ulysses_sequence_parallel_size=sp, model_dtype="fp32",
        mixed_precision={"param_dtype": "fp32", "reduce_dtype": "fp32", "buffer_dtype": "fp32"},
        use_torch_compile=False,
    )
    engine = EngineRegistry.new(
        model_type="language_model", backend="fsdp2", model_config=model_config, engine_config=engine_config,
        optimizer_config=FSDPOptimizerConfig(lr=1e-6), checkpoint_config=CheckpointConfig(),
    )
    engine.initialize()
    return engine


def engine_worker(rank: int, world_size: int, port: int, model_dir: str, samples: list, runs: list,
                  out_path: str) -> None:
    """One rank: for each run (remove_padding, sp, dynamic_bsz, legacy_layout, flags, optionally its own
    model_dir and samples), verl's engine.infer_batch; rank 0 saves {run name: {"outputs": {key: [per-sample
    tensors]}, "timings": the `timing_s/` metrics of the pass, ...}}.

    Engines are built in the order the runs first ask for them (the padded one first: building a
    remove-padding engine patches the model classes' attention for the whole process).
    """
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    enable_cpu_platform()
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        import transformers

        import vgpo_verl.engine
        import vgpo_verl.plugin  # noqa: F401  (what verl's entry point does on `import verl`)
        from verl.utils import tensordict_utils as tu

        install_torch_varlen_attention()
        scoring_hooks = []
        original_capture = vgpo_verl.engine.HiddenStateCapture

        def counting_capture(*args, **kwargs):  # records every hook the engine installs
            scoring_hooks.append(1)
            return original_capture(*args, **kwargs)

        vgpo_verl.engine.HiddenStateCapture = counting_capture
        plain_models, engines, results = {}, {}, {}
        for run in runs:
            run_dir, run_samples = run.get("model_dir", model_dir), run.get("samples", samples)
            if run_dir not in plain_models:  # for position ids only
                plain_models[run_dir] = transformers.AutoModelForImageTextToText.from_pretrained(run_dir)
            key = (run_dir, run["remove_padding"], run.get("sp", 1))
            if key not in engines:
                engines[key] = build_engine(*key)
            engine = engines[key]
            batch = build_batch(plain_models[run_dir], run_samples, run.get("legacy_layout", False),
                                **run.get("flags", {}))
            tu.assign_non_tensor(
                batch, use_remove_padding=run["remove_padding"], use_dynamic_bsz=run.get("dynamic_bsz", False),
                max_token_len_per_gpu=run.get("max_token_len", 4096), micro_batch_size_per_gpu=2,
                use_fused_kernels=False,
            )
            hooks_before = len(scoring_hooks)
            with engine.eval_mode():
                output = engine.infer_batch(batch)
            results[run["name"]] = {
                "engine_class": type(engine).__name__,
                "scoring_hooks": len(scoring_hooks) - hooks_before,
                "outputs": {k: [t.clone() for t in v.unbind()] for k, v in output["model_output"].items()},
                "timings": {k: v for k, v in output["metrics"].items() if k.startswith("timing_s/")},
            }
        if rank == 0:
            torch.save(results, out_path)
    finally:
        torch.distributed.destroy_process_group()


def run_engine(model_dir: str, samples: list, runs: list, out_path: str, world_size: int = 1) -> dict:
    """Spawn `world_size` gloo ranks running engine_worker; return rank 0's saved results."""
    import torch.multiprocessing as mp

    mp.spawn(engine_worker, args=(world_size, free_port(), model_dir, samples, runs, out_path),
             nprocs=world_size, join=True)
    return torch.load(out_path)
