"""`python -m vgpo_verl.demo` end to end: real verl PPO with the vgpo estimator on this CPU (minutes).

One run of the demo as a user starts it (`make demo`), into a temporary cache directory, then
checks what the demo promises: exit 0, two training steps with a reward, a validation pass, the
`vgpo/` metrics on every step computed from image tokens (no response without a visual token),
and no process of the run left behind.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

from vgpo_verl.demo.run import RUN_ID_VAR, STEPS


def _processes_with_run_id() -> list[int]:
    marker = f"{RUN_ID_VAR}=".encode()
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if any(item.startswith(marker) for item in (entry / "environ").read_bytes().split(b"\0")):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    cache = tmp_path_factory.mktemp("demo")
    before = set(_processes_with_run_id())
    proc = subprocess.run(
        [sys.executable, "-m", "vgpo_verl.demo", "--cache-dir", str(cache)],
        capture_output=True,
        text=True,
        timeout=1800,
        env={k: v for k, v in os.environ.items() if k != RUN_ID_VAR},
    )
    runs = sorted((cache / "runs").glob("*/metrics.jsonl"))
    metrics = {}
    if runs:
        for line in runs[-1].read_text().splitlines():
            record = json.loads(line)
            metrics.setdefault(record["step"], {}).update(record["data"])
    return proc, metrics, set(_processes_with_run_id()) - before


@pytest.mark.slow
def test_demo_exits_zero_with_a_summary(demo_run):
    proc, _, _ = demo_run
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert f"training steps      {STEPS} of {STEPS}" in proc.stdout
    assert "INCOMPLETE" not in proc.stdout


@pytest.mark.slow
def test_demo_trains_two_steps_and_validates(demo_run):
    _, metrics, _ = demo_run
    steps = sorted(s for s, values in metrics.items() if "critic/score/mean" in values)
    assert steps == list(range(1, STEPS + 1))
    for step in steps:
        assert 0.0 <= metrics[step]["critic/score/mean"] <= 1.0  # boxed-answer accuracy
    assert any(k.startswith("val-core/") for values in metrics.values() for k in values)


@pytest.mark.slow
def test_demo_vgpo_metrics_come_from_image_tokens(demo_run):
    _, metrics, _ = demo_run
    for step in range(1, STEPS + 1):
        vgpo = {k: v for k, v in metrics[step].items() if k.startswith("vgpo/")}
        assert vgpo, f"step {step} has no vgpo/ metrics"
        assert vgpo["vgpo/no_visual_fraction"] == 0.0
        # every response was scored against its image: similarities are real cosines, weights vary
        assert math.isfinite(vgpo["vgpo/similarity_mean"]) and -1.0 <= vgpo["vgpo/similarity_mean"] <= 1.0
        assert vgpo["vgpo/psi_min"] < vgpo["vgpo/psi_max"]


@pytest.mark.slow
def test_demo_leaves_no_process_behind(demo_run):
    _, _, leftovers = demo_run
    assert not leftovers
