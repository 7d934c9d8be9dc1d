"""Child-process check for tests/test_cpu_platform.py: on an image prompt, do vLLM (CPU, bf16) and the
HF model (what verl's actor runs) see the same inputs and give the same log-probs?

Prints one JSON line: pixel agreement after vLLM's device-side rescale/normalize, prompt-id equality
after verl's image-token dedup, and mean |delta log-prob| of a fixed 24-token response, with and
without the image. Usage: python tests/_cpu_vision_agreement.py MODEL_DIR DATA_PARQUET
"""

import io
import json
import sys


def main(model_dir: str, data: str) -> None:
    import vgpo_verl.cpu

    vgpo_verl.cpu.enable()
    import numpy as np
    import pandas as pd
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration
    from verl.utils import hf_processor
    from verl.utils.dataset.vision_utils import process_image
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
    facts = {}

    # vLLM's own multimodal processor; it leaves rescale/normalize to the model (mm_device_do_normalize)
    from vllm.config import ModelConfig
    from vllm.multimodal import MULTIMODAL_REGISTRY

    mm_limits = {"image": 1, "video": 0}
    vproc = MULTIMODAL_REGISTRY.create_processor(ModelConfig(model=model_dir, max_model_len=160, limit_mm_per_prompt=mm_limits))
    vllm_in = vproc._apply_hf_processor_main(mm_items=vproc.data_parser.parse_mm_data({"image": [image]}), hf_processor_mm_kwargs={})
    ip = proc.image_processor
    raw = vllm_in["pixel_values"].float().view(-1, 3, 2 * 14 * 14)
    mean, std = torch.tensor(ip.image_mean).view(1, 3, 1), torch.tensor(ip.image_std).view(1, 3, 1)
    normalized = ((raw * ip.rescale_factor - mean) / std).view(vllm_in["pixel_values"].shape)
    facts["grid_equal"] = vllm_in["image_grid_thw"].tolist() == actor_in["image_grid_thw"].tolist()
    facts["pixel_max_abs_diff"] = (normalized - actor_in["pixel_values"].float()).abs().max().item()

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
        logp = torch.log_softmax(logits[0, :-1], -1).gather(-1, input_ids[0, 1:, None])[:, 0]
        hf_logp[with_image] = logp[-len(response):]
    del model

    from vllm import LLM, SamplingParams

    llm = LLM(model=model_dir, dtype="bfloat16", max_model_len=160, enforce_eager=True, limit_mm_per_prompt=mm_limits,
              skip_mm_profiling=True, distributed_executor_backend="uni")
    params = SamplingParams(max_tokens=1, prompt_logprobs=0)
    for with_image, seq in ids.items():
        prompt = {"prompt_token_ids": qwen2_5_vl_dedup_image_tokens(seq, proc) if with_image else seq}
        if with_image:
            prompt["multi_modal_data"] = {"image": [image]}
        out = llm.generate([prompt], params, use_tqdm=False)[0]
        seen = list(out.prompt_token_ids)
        facts[f"prompt_equal_image_{with_image}"] = seen == seq
        vllm_logp = torch.tensor([out.prompt_logprobs[i][seen[i]].logprob for i in range(len(seen) - len(response), len(seen))])
        facts[f"mean_abs_dlogp_image_{with_image}"] = (vllm_logp - hf_logp[with_image]).abs().mean().item()
    print("AGREEMENT=" + json.dumps(facts), flush=True)


if __name__ == "__main__":  # vLLM starts its engine in a spawned process, which re-imports this file
    main(sys.argv[1], sys.argv[2])
