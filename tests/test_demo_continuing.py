"""`python -m vgpo_verl.demo --run-dir DIR --steps N` (vgpo_verl.demo.continuing): what needs no training run.

The runs themselves are in tests/test_demo.py (a fresh run checkpointing every step) and
tests/test_demo_methods.py (runs resumed from its step 1).
"""

from __future__ import annotations

import json
import pathlib

import pytest

from _cli_utils import usage_error

from vgpo_verl.plugin.checkpoints import TRACKER, record_complete, step_folder
from vgpo_verl.demo import continuing
from vgpo_verl.demo import run as demo_run
from vgpo_verl.demo.__main__ import main
from vgpo_verl.demo.summary import render_summary


def _metrics(steps):
    metrics = {step: {"critic/score/mean": 0.5, "vgpo/psi_mean": 1.0, "vgpo/no_visual_fraction": 0.0} for step in steps}
    metrics[max(steps)]["val-core/shapes/acc/mean@1"] = 0.25
    return metrics


def _summary(metrics, resumed_from):
    return render_summary(metrics, steps=3, estimator="vgpo", exit_code=0, wall_s=60.0, peak_memory_bytes=2**30,
                          run_dir=pathlib.Path("/tmp/run"), resumed_from=resumed_from)


def test_a_resumed_summary_says_so_and_counts_the_missing_steps_only():
    text, complete = _summary(_metrics([2, 3]), resumed_from=1)
    assert complete, text
    assert "resumed from step 1" in text and "training steps      2 of 2" in text
    assert "step 2: reward" in text and "step 1: reward" not in text


def test_a_run_that_trained_the_saved_steps_again_is_incomplete():
    text, complete = _summary(_metrics([1, 2, 3]), resumed_from=1)
    assert not complete and "steps [1] were trained again: the run did not resume from step 1" in text
    text, complete = _summary(_metrics([1, 2, 3]), resumed_from=0)
    assert complete and "resumed from" not in text


def test_more_steps_than_one_epoch_get_the_epochs_they_need():
    over = demo_run.overrides(pathlib.Path("m"), pathlib.Path("t"), pathlib.Path("v"), "vgpo", steps=5)
    assert {"trainer.total_training_steps=5", "trainer.test_freq=5"} <= set(over)
    per_epoch = demo_run.TRAIN_PROMPTS // demo_run.BATCH_PROMPTS
    assert f"trainer.total_epochs={-(-5 // per_epoch)}" in over  # verl's loop also ends with the epochs
    assert "trainer.total_epochs=1" in demo_run.overrides(pathlib.Path("m"), pathlib.Path("t"), pathlib.Path("v"), "vgpo")


def _saved(run_dir: pathlib.Path, step: int, estimator="vgpo") -> None:
    folder = step_folder(run_dir / "checkpoints", step)
    folder.mkdir(parents=True)
    (folder / "data.pt").write_bytes(b"x")
    record_complete(folder, step)
    (run_dir / "checkpoints" / TRACKER).write_text(str(step))
    (run_dir / continuing.RECORD).write_text(json.dumps({"estimator": estimator}))


def test_a_run_dir_at_the_requested_step_has_nothing_to_train(tmp_path, capsys):
    _saved(tmp_path / "run", 2)
    assert main(["--cache-dir", str(tmp_path / "cache"), "--run-dir", str(tmp_path / "run"), "--steps", "2"]) == 0
    assert "is at step 2: nothing to train for --steps 2" in capsys.readouterr().out
    assert not (tmp_path / "cache").exists()  # decided before building anything


def test_a_run_dir_of_another_estimator_or_no_steps_is_refused(tmp_path, capsys):
    _saved(tmp_path / "run", 1, estimator="vppo")
    line = usage_error(capsys, main, "--cache-dir", tmp_path / "cache", "--run-dir", tmp_path / "run", "--steps", 2)
    assert "holds a run of --estimator vppo, not vgpo; continue it with --estimator vppo" in line
    assert "--steps: expected an integer >= 1, got '0'" in usage_error(capsys, main, "--steps", 0)
    assert "--run-dir continues the demo's run" in usage_error(capsys, main, "--run-dir", tmp_path / "run", "--learn")
    assert "run one at a time" in usage_error(capsys, main, "--learn", "--mechanism")
    (tmp_path / "a_file").write_text("")
    assert "--out" in usage_error(capsys, main, "--mechanism", "--out", tmp_path / "a_file")
    assert not (tmp_path / "cache").exists()  # every mistake found before building anything


def test_prepare_resumes_from_the_newest_complete_checkpoint(tmp_path):
    _saved(tmp_path, 1)
    step_folder(tmp_path / "checkpoints", 2).mkdir()  # a save that never finished
    (tmp_path / "checkpoints" / TRACKER).write_text("2")
    invocation, checkpoints, resumed_from = continuing.prepare(tmp_path, "vgpo")
    assert (checkpoints, resumed_from) == (tmp_path / "checkpoints", 1)
    assert invocation.parent == tmp_path / "runs" and not invocation.exists()
    assert continuing.checkpoint_overrides(checkpoints) == [
        "trainer.save_freq=1", f"trainer.default_local_dir={checkpoints}", "trainer.resume_mode=auto"]


def test_demo_runs_log_like_a_cluster_run_offline(tmp_path):
    """Every demo run: verl's jsonl, W&B offline and TensorBoard in its run folder; the forgetting chart at
    every step for vgpo (vgpo_verl.plugin.tracking), no vgpo block for other estimators."""
    vgpo = demo_run.overrides(pathlib.Path("m"), pathlib.Path("t"), pathlib.Path("v"), "vgpo")
    assert "trainer.logger=[console,file,wandb,tensorboard]" in vgpo
    assert "+algorithm.vgpo.focus_chart_every=1" in vgpo
    assert not [o for o in demo_run.overrides(pathlib.Path("m"), pathlib.Path("t"), pathlib.Path("v"), "grpo")
                if "algorithm.vgpo" in o]
    env = demo_run.run_environment(tmp_path, "run-id")
    assert env["WANDB_MODE"] == "offline" and env["WANDB_DIR"] == str(tmp_path)
    assert env["TENSORBOARD_DIR"] == str(tmp_path / "tensorboard") and env["VERL_FILE_LOGGER_PATH"].startswith(str(tmp_path))


def test_the_summary_names_the_newest_wandb_run(tmp_path):
    from vgpo_verl.demo.summary import logger_folders

    assert logger_folders(tmp_path) == {}
    for name in ("offline-run-20261207_090000-aaaa", "offline-run-20261207_100000-bbbb"):
        (tmp_path / "wandb" / name).mkdir(parents=True)
    (tmp_path / "tensorboard").mkdir()
    assert logger_folders(tmp_path) == {"W&B (offline)": tmp_path / "wandb" / "offline-run-20261207_100000-bbbb",
                                        "TensorBoard": tmp_path / "tensorboard"}
