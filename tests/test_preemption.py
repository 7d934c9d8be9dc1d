"""A stop request ends a run cleanly at the end of a step, saved (vgpo_verl.plugin.preemption).

v1: verl's own PPOTrainerSync.fit loop (tests/_fake_trainers.py: no Ray, no model; the step itself
and the weight sync are stand-ins) with the plugin's hook; the request arrives during step 2 of 4.
Legacy: the hook on a loop with the shape of RayPPOTrainer.fit's end of step (pinned against verl's
source).
"""

from __future__ import annotations

import inspect
import json
import pathlib

import pytest

from _fake_trainers import FakeStep, Workers, v1_trainer, verl_config

from vgpo_verl.plugin import preemption
from vgpo_verl.plugin.checkpoints import TRACKER, problem, step_folder


@pytest.fixture
def request_file(tmp_path, monkeypatch):
    path = tmp_path / "run" / "stop_requested"
    path.parent.mkdir()
    monkeypatch.setenv(preemption.STOP_FILE_VAR, str(path))
    return path


def _fit(config, tmp_path, monkeypatch, request_at: int | None, request: pathlib.Path | None, start=None):
    """verl's fit over 4 steps; the request file appears during step `request_at`. Returns
    (trainer, steps that ran, steps logged)."""
    import transfer_queue

    metrics = tmp_path / f"metrics_{start or 0}.jsonl"
    monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(metrics))
    monkeypatch.setattr(transfer_queue, "kv_clear", lambda **kwargs: None)
    trainer = v1_trainer(config, Workers())
    if start is not None:
        trainer._load_checkpoint()
        assert trainer.global_steps == start
    ran = []

    def on_step(step):
        ran.append(step)
        if step == request_at:
            request.write_text("SIGUSR1")

    fake = FakeStep(trainer, on_step)
    trainer.step, trainer._compute_metrics = fake.step, fake.compute_metrics
    trainer.fit(agent_loop_manager=None)
    logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    return trainer, ran, logged


@pytest.mark.parametrize("save_freq", [-1, 1])
def test_v1_stops_after_the_step_saved_and_resumes_at_the_next(tmp_path, monkeypatch, request_file, save_freq):
    config = verl_config(tmp_path / "checkpoints", [f"trainer.save_freq={save_freq}"])
    trainer, ran, logged = _fit(config, tmp_path, monkeypatch, request_at=2, request=request_file)
    assert ran == [1, 2] and logged == [1, 2]  # the step finished, its metrics logged, no step 3
    assert trainer.actor_rollout_wg.saved == [1, 2][-2 if save_freq == 1 else -1:]  # step 2 saved once
    assert trainer.checkpoint_manager.synced == [1, 2]  # verl's own on_step_end still ran
    assert problem(step_folder(tmp_path / "checkpoints", 2)) is None
    answer = json.loads(preemption.answer_path(request_file).read_text())
    assert answer == {"step": 2, "checkpoint": str(step_folder(tmp_path / "checkpoints", 2))}

    request_file.unlink()  # the launcher's next start
    preemption.answer_path(request_file).unlink()
    resumed, ran, logged = _fit(config, tmp_path, monkeypatch, request_at=None, request=None, start=2)
    assert ran == [3, 4] and logged == [3, 4]
    assert resumed.train_dataloader.position == 4  # 2 restored + 2 trained
    assert not preemption.answer_path(request_file).exists()  # a run that ends does not ask for more


def test_v1_request_during_the_last_step_is_a_normal_end(tmp_path, monkeypatch, request_file):
    config = verl_config(tmp_path / "checkpoints", ["trainer.save_freq=2"])
    trainer, ran, logged = _fit(config, tmp_path, monkeypatch, request_at=4, request=request_file)
    assert ran == logged == [1, 2, 3, 4]
    assert trainer.actor_rollout_wg.saved == [2, 4]  # verl's own saves only
    assert not preemption.answer_path(request_file).exists()


def test_without_the_variable_no_file_stops_anything(tmp_path, monkeypatch):
    monkeypatch.delenv(preemption.STOP_FILE_VAR, raising=False)
    stray = tmp_path / "stop_requested"
    config = verl_config(tmp_path / "checkpoints")
    trainer, ran, _ = _fit(config, tmp_path, monkeypatch, request_at=1, request=stray)
    assert ran == [1, 2, 3, 4] and trainer.actor_rollout_wg.saved == []
    assert not (tmp_path / "checkpoints" / TRACKER).exists()


# ---------------------------------------------------------------- legacy trainer


def test_legacy_fit_ends_its_steps_with_logging_then_on_batch_end():
    """What the legacy hook relies on, in verl's RayPPOTrainer.fit: per step, the save, then the
    metrics logged, the step counted, the return on the last step, and only then on_batch_end."""
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer

    source = inspect.getsource(inspect.unwrap(RayPPOTrainer.fit))
    at = 0
    for expected in ("self._save_checkpoint()", "logger.log(data=metrics", "self.global_steps += 1", "if is_last_step:",
                     "return", 'if hasattr(self.train_dataset, "on_batch_end")', "self.train_dataset.on_batch_end("):
        at = source.index(expected, at)  # ValueError: not there, or not in this order
    assert source.count("on_batch_end(") == 1 and source.count("self._save_checkpoint()") == 1


class _LegacyLoop:
    """The end of RayPPOTrainer.fit's step (test above), over 4 steps, saving like verl at `save_freq`."""

    def __init__(self, checkpoint_dir, save_freq, request_at=None, request=None):
        from vgpo_verl.plugin.checkpoints import SAVED_STEP_ATTR, record_complete

        class Dataset:
            def __init__(self):
                self.ends = 0

            def on_batch_end(self, batch):
                self.ends += 1

        self.train_dataset, self.saved, self.logged, self.dump_shut = Dataset(), [], [], False
        self.global_steps, self.save_freq, self.request_at, self.request = 0, save_freq, request_at, request
        self.config = verl_config(checkpoint_dir)
        self._record, self._attr = record_complete, SAVED_STEP_ATTR

    def _save_checkpoint(self):
        folder = step_folder(pathlib.Path(self.config.trainer.default_local_dir), self.global_steps)
        folder.mkdir(parents=True, exist_ok=True)
        self.saved.append(self.global_steps)
        self._record(folder, self.global_steps)
        setattr(self, self._attr, self.global_steps)

    def _shutdown_dump_executor(self):
        self.dump_shut = True

    def fit(self):
        self.global_steps += 1
        for _ in range(4):
            is_last_step = self.global_steps >= 4
            if self.global_steps == self.request_at:
                self.request.write_text("SIGTERM")
            if self.save_freq > 0 and (is_last_step or self.global_steps % self.save_freq == 0):
                self._save_checkpoint()
            self.logged.append(self.global_steps)
            self.global_steps += 1
            if is_last_step:
                return
            if hasattr(self.train_dataset, "on_batch_end"):
                self.train_dataset.on_batch_end(batch=None)


@pytest.mark.parametrize("save_freq", [-1, 1])
def test_legacy_stops_after_the_step_saved(tmp_path, request_file, save_freq):
    loop = _LegacyLoop(tmp_path / "checkpoints", save_freq, request_at=2, request=request_file)
    preemption._wrap_legacy_fit(_LegacyLoop.fit)(loop)
    assert loop.logged == [1, 2] and loop.dump_shut
    assert loop.saved == ([1, 2] if save_freq == 1 else [2])  # step 2 saved once, under its own number
    assert loop.global_steps == 3  # as verl leaves it after step 2
    assert loop.train_dataset.ends == 2 and "on_batch_end" not in vars(loop.train_dataset)  # its own hook ran, and is back
    assert json.loads(preemption.answer_path(request_file).read_text())["step"] == 2


def test_legacy_without_a_request_runs_to_the_end(tmp_path, request_file):
    loop = _LegacyLoop(tmp_path / "checkpoints", save_freq=-1)
    preemption._wrap_legacy_fit(_LegacyLoop.fit)(loop)
    assert loop.logged == [1, 2, 3, 4] and loop.saved == [] and not loop.dump_shut
    assert not preemption.answer_path(request_file).exists()


def test_the_plugin_wraps_both_trainers():
    from verl.trainer.ppo import v1
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer

    import vgpo_verl  # noqa: F401  (the hooks)

    assert getattr(RayPPOTrainer.fit, "_vgpo_wrapped", False)
    for mode in ("sync", "colocate_async", "separate_async"):
        cls = v1.get_trainer_cls(mode)
        assert getattr(cls.on_step_end, "_vgpo_wrapped", False), mode
