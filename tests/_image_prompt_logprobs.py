"""Shared by the vLLM-vs-actor child scripts (_cpu_vision_agreement.py, _demo_rollout_sync.py).

One demo image prompt and its text-only twin, each followed by the same fixed 24-token response;
the response's log-probs under the fp32 HF model (what verl's actor runs) and under a vLLM engine.
Call after `vgpo_verl.cpu.enable()` (the processor needs the torchvision-free path).
"""

import json
import os
import sys

import numpy as np
import torch

QUESTION = "How many red circles?"
RESPONSE_TOKENS = 24


def image_and_text_prompts(model_dir: str, data: str):
    """(processor, PIL image, actor inputs of the image prompt, {with_image: prompt + response ids})."""
    import pandas as pd
    from verl.utils import hf_processor
    from verl.utils.dataset.vision_utils import process_image

    row = pd.read_parquet(data).iloc[0]
    proc = hf_processor(model_dir)
    image = process_image({"bytes": row["images"][0]["bytes"]}, image_patch_size=14)  # as verl's dataset
    text = proc.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}],
        add_generation_prompt=True, tokenize=False,
    )
    actor_in = proc(text=[text], images=[image], return_tensors="pt")
    response = np.random.default_rng(0).integers(100, 150000, size=RESPONSE_TOKENS).tolist()
    text_prompt = proc.tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True, tokenize=True)
    text_prompt = list(text_prompt["input_ids"] if hasattr(text_prompt, "keys") else text_prompt)
    ids = {True: actor_in["input_ids"][0].tolist() + response, False: text_prompt + response}
    return proc, image, actor_in, ids


def hf_response_logprobs(model, proc, actor_in, ids) -> dict:
    """{with_image: (RESPONSE_TOKENS,) log-probs of the response under the HF model}."""
    out = {}
    for with_image, seq in ids.items():
        input_ids = torch.tensor([seq])
        kwargs = {}
        if with_image:
            kwargs = dict(pixel_values=actor_in["pixel_values"], image_grid_thw=actor_in["image_grid_thw"],
                          mm_token_type_ids=(input_ids == proc.image_token_id).long())
        with torch.no_grad():
            logits = model(input_ids=input_ids, **kwargs).logits.float()
        out[with_image] = torch.log_softmax(logits[0, :-1], -1).gather(-1, input_ids[0, 1:, None])[-RESPONSE_TOKENS:, 0]
    return out


def vllm_response_logprobs(llm, proc, image, ids) -> tuple[dict, dict]:
    """({with_image: response log-probs under vLLM}, {with_image: the prompt ids vLLM saw})."""
    from vllm import SamplingParams
    from verl.workers.rollout.utils import qwen2_5_vl_dedup_image_tokens

    params = SamplingParams(max_tokens=1, prompt_logprobs=0)
    logprobs, seen_ids = {}, {}
    for with_image, seq in ids.items():
        prompt = {"prompt_token_ids": qwen2_5_vl_dedup_image_tokens(seq, proc) if with_image else seq}
        if with_image:
            prompt["multi_modal_data"] = {"image": [image]}
        out = llm.generate([prompt], params, use_tqdm=False)[0]
        seen = list(out.prompt_token_ids)
        seen_ids[with_image] = seen
        logprobs[with_image] = torch.tensor(
            [out.prompt_logprobs[i][seen[i]].logprob for i in range(len(seen) - RESPONSE_TOKENS, len(seen))]
        )
    return logprobs, seen_ids


def report_and_exit(tag: str, facts: dict, llm) -> None:
    """Print `TAG=<json>`, stop the vLLM engine, and leave without interpreter teardown.

    Why: once in a while (seen once in CI, in 1 of many runs) a C++ thread still alive at interpreter
    teardown aborted the process ("terminate called without an active exception", SIGABRT) after the
    facts were computed. The engine is shut down in order, as vgpo_verl.evaluate.backends does, and
    os._exit skips the static destructors; a crash before this point still fails the test.
    """
    print(f"{tag}=" + json.dumps(facts), flush=True)
    llm.llm_engine.engine_core.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
