"""Checks of the command line that ``evaluate`` and ``analyze`` share, made before any model is loaded.

Mistakes in the command (a --checkpoint that is not a Hugging Face model, a label given twice, a pixel
range upside down) are one line on stderr and exit status 2 (vgpo_verl.cli).
"""

from __future__ import annotations

import pathlib
import re
from typing import Sequence

from vgpo_verl.cli import UsageError
from vgpo_verl.evaluate.protocol import PAPER_MAX_PIXELS, PAPER_MIN_PIXELS


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


# Where transformers reads a vision model's image processor from (the second: transformers 5's processor file).
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


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
    if not any((path / name).is_file() for name in PROCESSOR_FILES):
        raise UsageError(f"--checkpoint {checkpoint} has no preprocessor_config.json (the image processor)",
                         "copy preprocessor_config.json (and chat_template.jinja if missing) from the base model "
                         "the checkpoint was trained from")


def check_pixels(min_pixels: int, max_pixels: int) -> None:
    if min_pixels > max_pixels:
        raise UsageError(f"--min-pixels {min_pixels} is above --max-pixels {max_pixels}",
                         f"give --min-pixels at most --max-pixels (the paper: {PAPER_MIN_PIXELS} and {PAPER_MAX_PIXELS})")
