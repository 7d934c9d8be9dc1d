"""Demo cache directories and demo runs for the tests that run the demo (one model and warm start per
session: conftest's `demo_assets`; the checkpointed vgpo run they share: conftest's `checkpointed_demo`)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

from vgpo_verl.demo.run import RUN_ID_VAR

DEMO_ASSETS = ("tiny_qwen2_5_vl", "warm_start")  # the directories vgpo_verl.demo builds under --cache-dir


def seeded_demo_cache(assets: pathlib.Path, cache: pathlib.Path) -> pathlib.Path:
    """`cache` as a demo --cache-dir of its own (data, runs) whose model and warm start are `assets`'."""
    cache.mkdir(parents=True, exist_ok=True)
    for name in DEMO_ASSETS:
        (cache / name).symlink_to(assets / name, target_is_directory=True)
    return cache


def processes_with_run_id() -> list[int]:
    """Every process carrying a demo run id (the demo marks all processes of its runs)."""
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


def demo_command(cache: pathlib.Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "vgpo_verl.demo", "--cache-dir", str(cache), *args]


def demo_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != RUN_ID_VAR}


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM first: the demo then ends its run's Ray and vLLM processes itself."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_demo(cache: pathlib.Path, *args: str) -> tuple[subprocess.CompletedProcess, set[int]]:
    """The demo run to its end (the demo stops a dead or stalled run itself; 30 min is the backstop):
    (its process, with output; the processes of its run left afterwards)."""
    before = set(processes_with_run_id())
    proc = subprocess.Popen(demo_command(cache, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=demo_env())
    try:
        stdout, stderr = proc.communicate(timeout=1800)
    except subprocess.TimeoutExpired:
        stop(proc)
        stdout, stderr = proc.communicate()
    done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    return done, set(processes_with_run_id()) - before


def invocation_metrics(run_dir: pathlib.Path) -> dict[int, dict]:
    """step -> metrics of the last invocation logged under a demo run directory (runs/<time>/metrics.jsonl)."""
    logs = sorted(pathlib.Path(run_dir).glob("runs/*/metrics.jsonl"))
    metrics: dict[int, dict] = {}
    for line in (logs[-1].read_text().splitlines() if logs else []):
        record = json.loads(line)
        metrics.setdefault(record["step"], {}).update(record["data"])
    return metrics
