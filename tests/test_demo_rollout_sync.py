"""The demo's vLLM rollout engine, after verl's weight sync from the actor, scores image prompts like
the actor (the HF model), and follows every later sync (the synced weights are the ones it uses).

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
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_keeps_image_normalization_on_the_host():
    """The override that keeps vLLM's normalize buffers out of the picture reaches verl's rollout config."""
    args = overrides("/m", "/t.parquet", "/v.parquet", "vgpo")
    assert "+actor_rollout_ref.rollout.engine_kwargs.vllm.mm_device_do_normalize=false" in args


AGREE = 0.01  # mean |delta log-prob| of the same weights in vLLM and the HF actor (bf16 noise ~1e-3)


@pytest.mark.slow
def test_synced_rollout_engine_agrees_with_actor_and_follows_each_sync(tmp_path):
    """Start sync, then two perturbed syncs (tied embedding / LM head; every other weight): vLLM must
    agree with the actor each time and move with it. Which CPU kernels this exercised is printed."""
    from vgpo_verl.demo.shapes_data import make_dataset

    model = build_tiny_vlm(tmp_path / "tiny_vlm")
    _, val = make_dataset(tmp_path / "shapes", 1, 1)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VGPO_CPU", "VERL_", "RAY_OVERRIDE"))}
    env["PYTHONPATH"] = REPO  # this checkout's package, nothing else
    env.update(VLLM_CACHE_ROOT=str(tmp_path / "vllm_cache"), XDG_CACHE_HOME=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, SCRIPT, str(model), str(val)], env=env, capture_output=True, text=True,
                          timeout=1200, cwd=tmp_path)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    line = [l for l in proc.stdout.splitlines() if l.startswith("SYNCED_AGREEMENT=")][-1]
    facts = json.loads(line[len("SYNCED_AGREEMENT="):])
    print(f"\nrollout dtype {facts['dtype']} on CPU {facts['cpu']} (vLLM packs fp32 linears into oneDNN on any "
          f"x86 CPU, bf16 ones on AVX-512/AMX); vllm_linear patch active: {facts['vllm_linear_patched']}\n{facts}")
    assert facts["load_format"] == "dummy", facts  # the case verl runs by default
    assert facts["vllm_linear_patched"], facts
    assert facts["mean_abs_dlogp_image_False"] < AGREE, facts
    assert facts["mean_abs_dlogp_image_True"] < AGREE, facts
    assert set(facts["perturbed"]) == {"embedding", "all_other_weights"}, facts
    for what, moved in facts["perturbed"].items():
        for prompt in ("image_False", "image_True"):
            assert moved["vllm_vs_perturbed_actor"][prompt] < AGREE, (what, prompt, facts)
            # far beyond the agreement tolerance: vLLM did not keep computing with the previous weights
            assert moved["vllm_moved_from_previous_sync"][prompt] > 10 * AGREE, (what, prompt, facts)
