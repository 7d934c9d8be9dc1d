"""Shared by tests/test_analyze.py and tests/test_evaluate.py: the tiny model and data, and CLI runs.

Model runs happen in child processes: the CPU vision path (vgpo_verl.cpu.enable) changes the
environment of the process that turns it on, which must not leak into other tests.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

PYTHON = sys.executable
# The tiny model's image processor range (56x56 to 112x112 px: at most 16 image tokens).
TINY_PIXELS = ["--min-pixels", str(56 * 56), "--max-pixels", str(112 * 112)]


def write_benchmark(path: pathlib.Path, answers: dict[str, str]) -> None:
    """A verl-format parquet: one 32x32 white image per prompt, `<image>` placeholder in the user turn."""
    import pandas as pd

    from _recipes_utils import png_bytes

    rows = [{
        "data_source": "planted",
        "prompt": [{"role": "user", "content": f"<image>Question {sample_id}? Put the answer in \\boxed{{}}."}],
        "images": [{"bytes": png_bytes(32, 32, (255, 255, 255)), "path": None}],
        "reward_model": {"style": "rule", "ground_truth": truth},
        "extra_info": {"index": int(sample_id)},
    } for sample_id, truth in answers.items()]
    pd.DataFrame(rows).to_parquet(path)


def write_checkpoint_folder(directory: pathlib.Path, n_layers: int = 2) -> pathlib.Path:
    """A folder with what the commands check before loading a model (config.json with the decoder's
    layer count, a weights file); no model loads from it."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl",
                                                       "text_config": {"num_hidden_layers": n_layers}}))
    (directory / "model.safetensors").write_bytes(b"")
    (directory / "preprocessor_config.json").write_text("{}")
    return directory


def build_tiny_setup(root: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """The demo's tiny checkpoint and 3 synthetic counting prompts of different prompt lengths
    (so that batched scoring has to pad)."""
    import pandas as pd

    from vgpo_verl.demo.shapes_data import make_dataset
    from vgpo_verl.demo.tiny_model import build_tiny_vlm

    checkpoint = build_tiny_vlm(root / "model")
    _, val = make_dataset(root / "data", n_train=1, n_val=3)
    frame = pd.read_parquet(val)
    frame["prompt"] = [[{"role": "user", "content": m[0]["content"] + " Think." * i}]
                       for i, m in enumerate(frame["prompt"])]
    frame.to_parquet(val)
    return checkpoint, val


def run_module(module: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m module args` in a child process; fails the test with its stderr tail."""
    proc = subprocess.run([PYTHON, "-m", module, *args], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{module} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    return proc
