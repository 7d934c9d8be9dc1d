"""Child-process check for tests/test_demo_rollout_sync.py: after verl's weight sync, does the demo's
vLLM rollout engine score image prompts like the HF model (the actor)?

verl starts vLLM on dummy weights (rollout load_format, "dummy" by default) and then loads the
actor's state dict into it. Anything in vLLM's model that the actor's state dict lacks keeps its
dummy value. This builds the vLLM engine with the demo's own engine arguments (parsed from
vgpo_verl.demo.run.overrides as Hydra parses them), applies the actor's weights the way verl's
vLLM worker extension does (verl's split_buffer_updates / apply_buffer_updates, the model's
load_weights, vLLM's process_weights_after_loading), then prints one JSON line: mean |delta log-prob|
of a fixed 24-token response against the fp32 HF model, with and without the image.

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


def demo_rollout_settings(model_dir: str, data: str) -> tuple[str, dict]:
    """(load_format, vLLM engine kwargs) of the demo's rollout, as verl would receive them."""
    import importlib.resources

    import yaml
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from vgpo_verl.demo.run import overrides

    rollout_yaml = importlib.resources.files("verl.trainer.config") / "rollout" / "rollout.yaml"
    load_format = yaml.safe_load(rollout_yaml.read_text())["load_format"]
    engine_kwargs = {}
    for override in OverridesParser.create().parse_overrides(overrides(model_dir, data, data, "vgpo")):
        key, value = override.key_or_group, override.value()
        if key == ROLLOUT + "load_format":
            load_format = value
        elif key.startswith(ENGINE_KWARGS):
            if isinstance(value, str) and value.startswith("{"):
                value = json.loads(value)  # verl hands it to vLLM's CLI as JSON
            engine_kwargs[key[len(ENGINE_KWARGS):]] = value
    return load_format, engine_kwargs


def main(model_dir: str, data: str) -> None:
    import vgpo_verl.cpu

    vgpo_verl.cpu.enable()
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration
    from verl.utils.model import convert_weight_keys

    from _image_prompt_logprobs import hf_response_logprobs, image_and_text_prompts, vllm_response_logprobs

    proc, image, actor_in, ids = image_and_text_prompts(model_dir, data)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa").eval()
    hf_logp = hf_response_logprobs(model, proc, actor_in, ids)
    # what the actor sends: its state dict under verl's key conversion
    actor_weights = [(k, v.detach().clone()) for k, v in convert_weight_keys(model.state_dict(), model).items()]
    del model

    from vllm import LLM

    load_format, engine_kwargs = demo_rollout_settings(model_dir, data)
    llm = LLM(model=model_dir, dtype="bfloat16", max_model_len=160, enforce_eager=True, load_format=load_format,
              **engine_kwargs)

    def sync_from_actor(worker):
        from verl.workers.rollout.vllm_rollout.weight_update_utils import apply_buffer_updates, split_buffer_updates
        from vllm.model_executor.model_loader.utils import process_weights_after_loading

        rollout_model = worker.model_runner.model
        params, buffers, named_buffers = split_buffer_updates(rollout_model, actor_weights)
        rollout_model.load_weights(params)
        apply_buffer_updates(rollout_model, buffers, named_buffers=named_buffers)
        process_weights_after_loading(rollout_model, worker.model_runner.model_config, torch.device("cpu"))

    llm.collective_rpc(sync_from_actor)
    facts = {"load_format": load_format, "engine_kwargs": engine_kwargs}
    vllm_logp, _ = vllm_response_logprobs(llm, proc, image, ids)
    for with_image in ids:
        facts[f"mean_abs_dlogp_image_{with_image}"] = (vllm_logp[with_image] - hf_logp[with_image]).abs().mean().item()
    print("SYNCED_AGREEMENT=" + json.dumps(facts), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
