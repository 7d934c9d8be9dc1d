"""Child-process check for tests/test_demo_rollout_sync.py: after verl's weight sync, does the demo's
vLLM rollout engine score image prompts like the HF model (the actor)?

verl starts vLLM on dummy weights (rollout load_format, "dummy" by default) and then loads the
actor's state dict into it. Anything in vLLM's model that the actor's state dict lacks keeps its
dummy value. This builds the vLLM engine with the demo's own engine arguments (parsed from
vgpo_verl.demo.run.overrides as Hydra parses them), applies the actor's weights the way verl's
vLLM worker extension does (verl's split_buffer_updates / apply_buffer_updates, the model's
load_weights, vLLM's process_weights_after_loading, then the cache resets of verl's
vLLMRollout.update_weights), then prints one JSON line: mean |delta log-prob|
of a fixed 24-token response against the fp32 HF model, with and without the image.

Then it proves the synced weights are the ones vLLM computes with: the actor's weights are perturbed
twice (first the tied token embedding / LM head, then every other weight, vision tower included),
each time synced the same way, and vLLM's log-probs must agree with the HF model carrying the
perturbed weights while having moved away from the previous ones (a packed copy left in use, e.g.
an LM head computing from a oneDNN handle, would agree with the old weights instead). The demo's
rollout runs in fp32, which vLLM packs into oneDNN on every x86-64 CPU: without
vgpo_verl.cpu.vllm_linear the first sync already fails here ('weight_loader').

Usage: python tests/_demo_rollout_sync.py MODEL_DIR DATA_PARQUET
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the shared helper beside this file

# vLLM's engine in this process, so collective_rpc can run the weight sync below on its worker
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"

ROLLOUT = "actor_rollout_ref.rollout."
ENGINE_KWARGS = ROLLOUT + "engine_kwargs.vllm."


def demo_rollout_settings(model_dir: str, data: str) -> tuple[str, str, dict]:
    """(load_format, dtype, vLLM engine kwargs) of the demo's rollout, as verl would receive them."""
    import importlib.resources

    import yaml
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from vgpo_verl.demo.run import overrides

    rollout_yaml = importlib.resources.files("verl.trainer.config") / "rollout" / "rollout.yaml"
    defaults = yaml.safe_load(rollout_yaml.read_text())
    load_format, dtype = defaults["load_format"], defaults["dtype"]
    engine_kwargs = {}
    for override in OverridesParser.create().parse_overrides(overrides(model_dir, data, data, "vgpo")):
        key, value = override.key_or_group, override.value()
        if key == ROLLOUT + "load_format":
            load_format = value
        elif key == ROLLOUT + "dtype":
            dtype = value
        elif key.startswith(ENGINE_KWARGS):
            if isinstance(value, str) and value.startswith("{"):
                value = json.loads(value)  # verl hands it to vLLM's CLI as JSON
            engine_kwargs[key[len(ENGINE_KWARGS):]] = value
    return load_format, dtype, engine_kwargs


def perturb_(model, names: list[str], seed: int) -> None:
    """Add noise of each weight's own spread to the named parameters (in place)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in names:
            p = params[name]
            p.add_(torch.randn(p.shape, generator=gen) * p.float().std().clamp_min(1e-3))


def main(model_dir: str, data: str) -> None:
    import vgpo_verl.cpu

    vgpo_verl.cpu.enable()
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration
    from verl.utils.model import convert_weight_keys

    from _image_prompt_logprobs import hf_response_logprobs, image_and_text_prompts, report_and_exit, vllm_response_logprobs

    proc, image, actor_in, ids = image_and_text_prompts(model_dir, data)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa").eval()

    def actor_weights():  # what the actor sends: its state dict under verl's key conversion
        return [(k, v.detach().clone()) for k, v in convert_weight_keys(model.state_dict(), model).items()]

    from vllm import LLM

    load_format, dtype, engine_kwargs = demo_rollout_settings(model_dir, data)
    llm = LLM(model=model_dir, dtype=dtype, max_model_len=160, enforce_eager=True, load_format=load_format,
              **engine_kwargs)

    def sync_from_actor(weights):
        def on_worker(worker):
            from verl.workers.rollout.vllm_rollout.weight_update_utils import apply_buffer_updates, split_buffer_updates
            from vllm.model_executor.model_loader.utils import process_weights_after_loading

            rollout_model = worker.model_runner.model
            params, buffers, named_buffers = split_buffer_updates(rollout_model, weights)
            rollout_model.load_weights(params)
            apply_buffer_updates(rollout_model, buffers, named_buffers=named_buffers)
            process_weights_after_loading(rollout_model, worker.model_runner.model_config, torch.device("cpu"))

        llm.collective_rpc(on_worker)
        # as verl's vLLMRollout.update_weights does next (server clear_kv_cache): without it a repeated
        # image reuses vision-encoder outputs cached under the old weights
        llm.reset_prefix_cache()
        llm.reset_mm_cache()
        llm.llm_engine.reset_encoder_cache()

    def dlogp(a: dict, b: dict) -> dict:
        return {f"image_{k}": (a[k] - b[k]).abs().mean().item() for k in ids}

    facts = {"load_format": load_format, "dtype": dtype, "engine_kwargs": engine_kwargs,
             "vllm_linear_patched": bool(getattr(__import__("vllm.model_executor.layers.utils", fromlist=["x"])
                                                 .dispatch_cpu_unquantized_gemm, "_vgpo_keeps_synced_weight", False)),
             "cpu": {n: bool(getattr(torch.cpu, n)()) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")}}
    hf_logp = hf_response_logprobs(model, proc, actor_in, ids)
    sync_from_actor(actor_weights())
    vllm_logp, _ = vllm_response_logprobs(llm, proc, image, ids)
    for with_image in ids:
        facts[f"mean_abs_dlogp_image_{with_image}"] = (vllm_logp[with_image] - hf_logp[with_image]).abs().mean().item()

    # the synced weights are the ones used: perturb, sync, follow
    embedding = [n for n, _ in model.named_parameters() if n.endswith("embed_tokens.weight")]
    rest = [n for n, p in model.named_parameters() if n not in embedding and p.is_floating_point()]
    facts["perturbed"] = {}
    for step, names in enumerate((embedding, rest), start=1):
        perturb_(model, names, seed=step)
        new_hf = hf_response_logprobs(model, proc, actor_in, ids)
        sync_from_actor(actor_weights())
        new_vllm, _ = vllm_response_logprobs(llm, proc, image, ids)
        facts["perturbed"]["embedding" if names is embedding else "all_other_weights"] = {
            "vllm_vs_perturbed_actor": dlogp(new_vllm, new_hf),
            "vllm_moved_from_previous_sync": dlogp(new_vllm, vllm_logp),
            "actor_moved": dlogp(new_hf, hf_logp),
        }
        hf_logp, vllm_logp = new_hf, new_vllm
    report_and_exit("SYNCED_AGREEMENT", facts, llm)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
