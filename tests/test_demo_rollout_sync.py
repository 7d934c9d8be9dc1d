"""The demo's vLLM rollout engine, after verl's weight sync from the actor, scores image prompts like
the actor (the HF model).

verl starts vLLM on dummy weights and overwrites them with the actor's state dict. vLLM's
Qwen2.5-VL rescales/normalizes pixels on its side by default (mm_device_do_normalize) with constant
buffers that the dummy init fills with noise and the actor's state dict cannot restore: without
the demo's `mm_device_do_normalize=false`, every image reaches vLLM's vision tower as ~0 and the
log-probs of an image prompt differ by about 0.3 (bf16 noise is about 1e-3).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from vgpo_verl.demo.run import overrides
from vgpo_verl.demo.tiny_model import build_tiny_vlm

SCRIPT = os.path.join(os.path.dirname(__file__), "_demo_rollout_sync.py")


def test_demo_keeps_image_normalization_on_the_host():
    """The override that keeps vLLM's normalize buffers out of the picture reaches verl's rollout config."""
    args = overrides("/m", "/t.parquet", "/v.parquet", "vgpo")
    assert "+actor_rollout_ref.rollout.engine_kwargs.vllm.mm_device_do_normalize=false" in args


@pytest.mark.slow
def test_synced_rollout_engine_agrees_with_actor_on_image_prompts(tmp_path):
    from vgpo_verl.demo.shapes_data import make_dataset

    model = build_tiny_vlm(tmp_path / "tiny_vlm")
    _, val = make_dataset(tmp_path / "shapes", 1, 1)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VGPO_CPU", "VERL_", "RAY_OVERRIDE"))}
    env.pop("PYTHONPATH", None)
    env.update(VLLM_CACHE_ROOT=str(tmp_path / "vllm_cache"), XDG_CACHE_HOME=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, SCRIPT, str(model), str(val)], env=env, capture_output=True, text=True,
                          timeout=1200, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("SYNCED_AGREEMENT=")][-1]
    facts = json.loads(line[len("SYNCED_AGREEMENT="):])
    assert facts["load_format"] == "dummy", facts  # the case verl runs by default
    assert facts["mean_abs_dlogp_image_False"] < 0.01, facts
    assert facts["mean_abs_dlogp_image_True"] < 0.01, facts
