"""Child-process check for tests/test_cpu_platform.py: on an image prompt, do vLLM (CPU, bf16) and the
HF model (what verl's actor runs) see the same inputs and give the same log-probs?

Prints one JSON line: pixel agreement after vLLM's device-side rescale/normalize, prompt-id equality
after verl's image-token dedup, and mean |delta log-prob| of a fixed 24-token response, with and
without the image. Usage: python tests/_cpu_vision_agreement.py MODEL_DIR DATA_PARQUET
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the shared helper beside this file


def main(model_dir: str, data: str) -> None:
    import vgpo_verl.cpu

    vgpo_verl.cpu.enable()
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from _image_prompt_logprobs import hf_response_logprobs, image_and_text_prompts, report_and_exit, vllm_response_logprobs

    proc, image, actor_in, ids = image_and_text_prompts(model_dir, data)
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

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa").eval()
    hf_logp = hf_response_logprobs(model, proc, actor_in, ids)
    del model

    from vllm import LLM

    llm = LLM(model=model_dir, dtype="bfloat16", max_model_len=160, enforce_eager=True, limit_mm_per_prompt=mm_limits,
              skip_mm_profiling=True, distributed_executor_backend="uni")
    vllm_logp, seen = vllm_response_logprobs(llm, proc, image, ids)
    for with_image, seq in ids.items():
        facts[f"prompt_equal_image_{with_image}"] = seen[with_image] == seq
        facts[f"mean_abs_dlogp_image_{with_image}"] = (vllm_logp[with_image] - hf_logp[with_image]).abs().mean().item()
    report_and_exit("AGREEMENT", facts, llm)


if __name__ == "__main__":  # vLLM starts its engine in a spawned process, which re-imports this file
    main(sys.argv[1], sys.argv[2])
