"""A few steps logged through verl's real Tracking (W&B offline, TensorBoard, verl's file logger), with
metrics shaped like a VGPO run's: shared by the logger-hook and report tests."""

from __future__ import annotations

import pathlib

FOCUS = "vgpo/focus_by_position/bin_"


def step_metrics(step: int) -> dict[str, float]:
    """A VGPO step's metrics: the focus curve falls along the response, faster as training goes on."""
    data = {
        "critic/score/mean": 0.1 * step,
        "vgpo/psi_min": 0.2, "vgpo/psi_mean": 1.0, "vgpo/psi_max": 1.8,
        "vgpo/alpha_min": 0.9, "vgpo/alpha_mean": 1.1, "vgpo/alpha_max": 1.4,
        "vgpo/gate_pass_rate": 0.2,
        "timing_s/vgpo_score": 0.5, "timing_s/vgpo_weights": 0.01,
        "perf/our_share_of_step": 0.02,
    }
    data.update({f"{FOCUS}{k}": 0.5 - 0.04 * k * step for k in range(5)})
    return data


def log_run(folder: pathlib.Path, monkeypatch, steps: int = 3, every: int = 2,
            loggers=("console", "file", "wandb", "tensorboard")) -> dict[str, pathlib.Path]:
    """Log `steps` steps (and a validation at the last) into `folder`; returns where each logger wrote."""
    from verl.utils.tracking import Tracking

    paths = {"file": folder / "metrics.jsonl", "wandb": folder, "tensorboard": folder / "tensorboard"}
    for name, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(folder), "WANDB_SILENT": "true",
                        "WANDB_CONSOLE": "off", "TENSORBOARD_DIR": str(paths["tensorboard"]),
                        "VERL_FILE_LOGGER_PATH": str(paths["file"])}.items():
        monkeypatch.setenv(name, value)
    config = {"trainer": {}, "algorithm": {"adv_estimator": "vgpo", "vgpo": {"focus_chart_every": every}}}
    tracking = Tracking("vgpo_test", "logged_run", list(loggers), config=config)
    for step in range(1, steps + 1):
        tracking.log(step_metrics(step), step)
    tracking.log({"val-core/shapes/acc/mean@1": 0.75}, steps)
    tracking.finish()
    if "wandb" in loggers:
        (paths["wandb"],) = sorted((folder / "wandb").glob("offline-run-*"))
    return paths
