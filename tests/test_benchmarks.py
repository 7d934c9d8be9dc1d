"""Every benchmark still runs: each `benchmarks/bench_*.py --quick` (tiny shapes, two rounds) exits 0
and prints its figure, parsed here. Speed itself is never asserted (the figures of a smoke run mean
nothing); `make bench` runs them at full size.
"""

from __future__ import annotations

import math
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUMBER = r"([0-9]+(?:\.[0-9]+)?)"
# script, extra options, the line(s) carrying its figure(s)
RUNS = [
    ("bench_weights.py", [], [rf"ratio weighting/sort: {NUMBER}x"]),
    ("bench_transfer.py", [], [rf"response / full sequence: {NUMBER}"]),
    ("bench_extractor.py", [], [rf"overhead ratio scored/plain \(cpu time, median of paired rounds\): {NUMBER}x",
                                rf"scoring inside the hook \(timing_s/vgpo_score\): median {NUMBER} ms"]),
    ("bench_extractor.py", ["--mode", "hf"],
     [rf"overhead ratio scored/plain \(cpu time, median of paired rounds\): {NUMBER}x",
      rf"scoring inside the hook \(timing_s/vgpo_score\): median {NUMBER} ms"]),
    ("bench_methods.py", [], [rf"overhead ratios vs plain \(cpu time.*\): entropy_shaping {NUMBER}x\s+vppo {NUMBER}x",
                              rf"VPPO's extra forward \(timing_s/vppo_aug_forward.*\): median {NUMBER} ms"]),
    ("bench_methods.py", ["--mode", "hf"],
     [rf"overhead ratios vs plain \(cpu time.*\): entropy_shaping {NUMBER}x\s+vppo {NUMBER}x"]),
]


def test_every_benchmark_is_covered():
    scripts = {path.name for path in (ROOT / "benchmarks").glob("bench_*.py")}
    assert scripts == {script for script, _, _ in RUNS}


@pytest.mark.parametrize("script, options, figures", RUNS, ids=[" ".join([s, *o]) for s, o, _ in RUNS])
def test_benchmark_quick_run_prints_its_figure(script, options, figures):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick", *options],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for pattern in figures:
        found = re.findall(pattern, proc.stdout)
        assert len(found) == 1, f"{pattern!r} not printed once:\n{proc.stdout[-3000:]}"
        values = found[0] if isinstance(found[0], tuple) else (found[0],)
        assert all(math.isfinite(float(v)) and float(v) >= 0 for v in values), found
    if script == "bench_transfer.py":  # a byte ratio, exact: the response layout is the smaller one
        assert 0 < float(re.findall(figures[0], proc.stdout)[0]) < 1
