"""`python -m vgpo_verl.demo --run-dir DIR --steps N`: a demo run that checkpoints every step and continues.

    DIR/checkpoints/    verl's checkpoints, one after every step (trainer.save_freq=1), and its marker
    DIR/runs/<time>/    each invocation's train.log, metrics.jsonl (verl's file logger starts a new file
                        on every start, so one per invocation) and command.json
    DIR/demo.json       the estimator of the run: continuing it with another one is refused

Running again with the same DIR and a larger N resumes from the newest complete checkpoint K
(vgpo_verl.plugin.checkpoints; verl's trainer.resume_mode=auto) and trains steps K+1..N only: the same
prompts in the same order as an uninterrupted run, the actor's weights, optimizer, lr schedule and
RNG as saved.
"""

from __future__ import annotations

import json
import pathlib
import time

from vgpo_verl.plugin.checkpoints import settle_tracker
from vgpo_verl.cli import UsageError

RECORD = "demo.json"


def checkpoint_overrides(checkpoint_dir: pathlib.Path) -> list[str]:
    """A checkpoint after every step into checkpoint_dir, and a start that resumes from the newest one."""
    return ["trainer.save_freq=1", f"trainer.default_local_dir={checkpoint_dir}", "trainer.resume_mode=auto"]


def prepare(run_dir: pathlib.Path, estimator: str) -> tuple[pathlib.Path, pathlib.Path, int]:
    """(this invocation's directory (to create), the checkpoint directory, the step it resumes from (0: none)).

    UsageError when DIR holds a run of another estimator (naming both).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    record = run_dir / RECORD
    if record.exists():
        before = json.loads(record.read_text())["estimator"]
        if before != estimator:
            raise UsageError(f"--run-dir {run_dir} holds a run of --estimator {before}, not {estimator}",
                             f"continue it with --estimator {before}, or give another --run-dir")
    else:
        record.write_text(json.dumps({"estimator": estimator}))
    checkpoints = run_dir / "checkpoints"
    resumed_from = settle_tracker(checkpoints) if checkpoints.exists() else None
    return run_dir / "runs" / time.strftime("%Y%m%d-%H%M%S"), checkpoints, resumed_from or 0
