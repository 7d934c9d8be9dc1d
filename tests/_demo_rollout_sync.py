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
    import numpy as np
    import pandas as pd
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration
    from verl.utils import hf_processor
    from verl.utils.dataset.vision_utils import process_image
    from verl.utils.model import convert_weight_keys
    from verl.workers.rollout.utils import qwen2_5_vl_dedup_image_tokens

    row = pd.read_parquet(data).iloc[0]
    proc = hf_processor(model_dir)
    image = process_image({"bytes": row["images"][0]["bytes"]}, image_patch_size=14)  # as verl's dataset
    question = "How many red circles?"
    text = proc.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
        add_generation_prompt=True, tokenize=False,
    )
    actor_in = proc(text=[text], images=[image], return_tensors="pt")
    response = np.random.default_rng(0).integers(100, 150000, size=24).tolist()
    text_prompt = proc.tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True)
    text_prompt = list(text_prompt["input_ids"] if hasattr(text_prompt, "keys") else text_prompt)
    ids = {True: actor_in["input_ids"][0].tolist() + response, False: text_prompt + response}

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa").eval()
    hf_logp = {}
    for with_image, seq in ids.items():
        input_ids = torch.tensor([seq])
        kwargs = {}
        if with_image:
            kwargs = dict(pixel_values=actor_in["pixel_values"], image_grid_thw=actor_in["image_grid_thw"],
                          mm_token_type_ids=(input_ids == proc.image_token_id).long())
        with torch.no_grad():
            logits = model(input_ids=input_ids, **kwargs).logits.float()
        hf_logp[with_image] = torch.log_softmax(logits[0, :-1], -1).gather(-1, input_ids[0, 1:, None])[-len(response):, 0]
    # what the actor sends: its state dict under verl's key conversion
    actor_weights = [(k, v.detach().clone()) for k, v in convert_weight_keys(model.state_dict(), model).items()]
    del model

    from vllm import LLM, SamplingParams

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
    params = SamplingParams(max_tokens=1, prompt_logprobs=0)
    for with_image, seq in ids.items():
        prompt = {"prompt_token_ids": qwen2_5_vl_dedup_image_tokens(seq, proc) if with_image else seq}
        if with_image:
            prompt["multi_modal_data"] = {"image": [image]}
        out = llm.generate([prompt], params, use_tqdm=False)[0]
        seen = list(out.prompt_token_ids)
        vllm_logp = torch.tensor([out.prompt_logprobs[i][seen[i]].logprob for i in range(len(seen) - len(response), len(seen))])
        facts[f"mean_abs_dlogp_image_{with_image}"] = (vllm_logp - hf_logp[with_image]).abs().mean().item()
    print("SYNCED_AGREEMENT=" + json.dumps(facts), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
