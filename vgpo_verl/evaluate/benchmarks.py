"""Benchmark files in, prompts out: ``Prompt``, ``load_benchmark(s)`` and the images, decoded on demand.

Benchmarks are verl-format parquet files (``prompt`` chat messages with ``<image>`` placeholders,
``images``, ``reward_model.ground_truth``, ``data_source``, ``extra_info.index``). A file that is not
one is a usage error (vgpo_verl.cli) naming the row and column that is wrong.
"""

from __future__ import annotations

import dataclasses
import io
import pathlib
from typing import Any

from vgpo_verl import cli
from vgpo_verl.cli import UsageError

IMAGE_PLACEHOLDER = "<image>"
BENCHMARK_FORMAT = "pass a verl-format parquet (python -m vgpo_verl.data writes them)"


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

    import pyarrow as pa

    path = pathlib.Path(path)
    try:
        frame = pd.read_parquet(path)
    except (pa.ArrowException, OSError) as error:  # ArrowInvalid: "Parquet magic bytes not found", ...
        raise UsageError(f"{path} is not a parquet file ({type(error).__name__}: {error})", BENCHMARK_FORMAT) from error
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


def load_benchmarks(named: dict[str, str], flag: str, image_key: str, max_samples: int | None,
                    require_answer: bool = True) -> dict[str, list[Prompt]]:
    """Every named benchmark file, each checked to exist before any is read."""
    for path in named.values():
        cli.existing_path(flag, path, BENCHMARK_FORMAT)
    return {name: load_benchmark(path, image_key, max_samples, require_answer) for name, path in named.items()}
