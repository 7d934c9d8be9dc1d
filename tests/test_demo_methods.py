"""The CPU demo with the comparison methods: `python -m vgpo_verl.demo --estimator entropy_shaping|vppo`.

The summary is unit-tested on made-up metric logs; the slow tests run the demo end to end (real
verl PPO, vLLM rollouts, the FSDP actor; for vppo its perturbed forward in the old-log-prob pass)
and check the method's own metrics on every step.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from _demo_cache import seeded_demo_cache

from vgpo_verl.demo.run import RUN_ID_VAR, STEPS
from vgpo_verl.demo.summary import render_summary

VAL = {"val-core/shapes/acc/mean@1": 0.25}


def _summary(estimator, per_step):
    metrics = {step: {"critic/score/mean": 0.5, **per_step} for step in range(1, STEPS + 1)}
    metrics[STEPS].update(VAL)
    return render_summary(metrics, steps=STEPS, estimator=estimator, exit_code=0, wall_s=60.0,
                          peak_memory_bytes=2**30, run_dir=pathlib.Path("/tmp/run"))


@pytest.mark.parametrize("estimator, key", [("vppo", "vppo/kept_token_fraction"),
                                            ("entropy_shaping", "entropy/bonus_mean")])
def test_summary_prints_the_methods_metrics_and_requires_them(estimator, key):
    text, complete = _summary(estimator, {key: 0.4})
    (line,) = [line for line in text.splitlines() if line.strip().startswith(key)][:1]
    assert complete and float(line.split()[-1]) == pytest.approx(0.4)
    text, complete = _summary(estimator, {"vgpo/psi_mean": 1.0})  # another method's metrics only
    assert not complete and f"step 1 has no {key.split('/')[0]}/ metrics" in text


def test_summary_prints_our_cost_per_step():
    text, complete = _summary("vgpo", {"vgpo/no_visual_fraction": 0.0, "timing_s/step": 20.0,
                                       "timing_s/vgpo_score": 0.4, "timing_s/vgpo_weights": 0.1,
                                       "perf/our_share_of_step": 0.025})
    lines = [line.strip() for line in text.splitlines() if "our code" in line]
    assert complete and lines == ["our code 0.500 s (vgpo_score 0.400 s, vgpo_weights 0.100 s), 2.50 % of the step"] * STEPS
    text, _ = _summary("grpo", {})
    assert "our code" not in text


def test_summary_of_verls_own_estimator_needs_no_method_metrics():
    text, complete = _summary("grpo", {})
    assert complete and "INCOMPLETE" not in text


@pytest.mark.slow
@pytest.mark.parametrize("estimator, prefix", [("entropy_shaping", "entropy/"), ("vppo", "vppo/")])
def test_demo_trains_with_the_method_to_the_end(demo_assets, tmp_path, estimator, prefix):
    cache = seeded_demo_cache(demo_assets, tmp_path / "cache")
    proc = subprocess.run(
        [sys.executable, "-m", "vgpo_verl.demo", "--estimator", estimator, "--cache-dir", str(cache)],
        capture_output=True, text=True, timeout=1800,
        env={k: v for k, v in os.environ.items() if k != RUN_ID_VAR},
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert f"training steps      {STEPS} of {STEPS}" in proc.stdout and "INCOMPLETE" not in proc.stdout
    (log,) = (cache / "runs").glob("*/metrics.jsonl")
    metrics = {}
    for line in log.read_text().splitlines():
        record = json.loads(line)
        metrics.setdefault(record["step"], {}).update(record["data"])
    for step in range(1, STEPS + 1):
        own = {k: v for k, v in metrics[step].items() if k.startswith(prefix)}
        assert own, f"step {step} has no {prefix} metrics"
        assert not any(k.startswith("vgpo/") for k in metrics[step])
        if estimator == "vppo":
            # the perturbed image changed the old policy's log-probs: tokens have visual dependency
            assert own["vppo/token_score_max"] > 0 and 0 < own["vppo/kept_token_fraction"] < 1
        else:
            assert own["entropy/token_entropy_mean"] > 0 and own["entropy/bonus_mean"] >= 0
        # our cost (vgpo_verl.timing): the estimator's seconds, and VPPO's extra forward
        timed = {k for k in metrics[step] if k in ("timing_s/vgpo_score", "timing_s/vppo_aug_forward",
                                                   "timing_s/vgpo_weights")}
        assert timed == {"timing_s/vgpo_weights", *(["timing_s/vppo_aug_forward"] if estimator == "vppo" else [])}
        assert all(metrics[step][k] >= 0 for k in timed) and metrics[step]["perf/our_share_of_step"] >= 0
