"""Only complete checkpoints are resumed from (vgpo_verl.plugin.checkpoints), including after a SIGKILL mid-save.

The kill tests run verl's own `_save_checkpoint` and `_load_checkpoint` (v1 PPOTrainerSync, wrapped
by the plugin) over stand-in workers (tests/_fake_trainers.py): a child process saves step 1, then
is killed with SIGKILL inside the save of step 2 at three places (half of the actor's files written;
while verl rewrites its marker; after the marker, before our record), and the next start must
resume from step 1.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

from _fake_trainers import DataLoader, Workers, v1_trainer, verl_config

from vgpo_verl.plugin import checkpoints
from vgpo_verl.plugin.checkpoints import RECORD, TRACKER, problem, record_complete, settle_tracker, step_folder

TESTS = pathlib.Path(__file__).resolve().parent


def _checkpoint(checkpoint_dir: pathlib.Path, step: int, record: bool = True) -> pathlib.Path:
    folder = step_folder(checkpoint_dir, step)
    (folder / "actor").mkdir(parents=True)
    (folder / "actor" / "model_world_size_1_rank_0.pt").write_bytes(os.urandom(1000))
    (folder / "data.pt").write_bytes(b"position")
    if record:
        record_complete(folder, step)
    return folder


def _tracker(checkpoint_dir: pathlib.Path, text: str) -> None:
    (checkpoint_dir / TRACKER).write_text(text)


def test_a_record_checks_every_file_and_its_size(tmp_path):
    folder = _checkpoint(tmp_path, 1)
    assert problem(folder) is None
    assert json.loads((folder / RECORD).read_text())["files"] == {"actor/model_world_size_1_rank_0.pt": 1000,
                                                                   "data.pt": 8}
    (folder / "data.pt").write_bytes(b"pos")  # cut short after its save
    assert problem(folder) == "data.pt has 3 bytes, 8 when saved"
    (folder / "data.pt").unlink()
    assert problem(folder) == "data.pt is missing"
    (folder / RECORD).write_text("{")
    assert "unreadable" in problem(folder)
    assert "did not finish" in problem(_checkpoint(tmp_path, 2, record=False))


@pytest.mark.parametrize("content, why", [
    ('{"step": 2, "files": null}', '"files" is None, not an object of file sizes'),
    ('{"step": 2}', '"files" is None'),
    ('{"step": 2, "files": ["data.pt"]}', '"files" is [\'data.pt\'], not an object'),
    ('{"step": 2, "files": {"data.pt": "8"}}', '"files"[\'data.pt\'] is \'8\', not a size in bytes'),
    ('{"step": 2, "files": {"data.pt": true}}', "is True, not a size"),
    ('[1, 2]', "holds list [1, 2], not an object"),
    ('null', "holds NoneType None"),
])
def test_any_malformed_record_is_a_named_problem_and_the_marker_moves_on(tmp_path, caplog, content, why):
    """A record of any shape (a hand edit, a foreign file) gives the reason, never a raw exception."""
    _checkpoint(tmp_path, 1)
    (_checkpoint(tmp_path, 2) / RECORD).write_text(content)
    found = problem(step_folder(tmp_path, 2))
    assert found.startswith(f"{RECORD} unreadable (") and why in found, found
    _tracker(tmp_path, "2")
    with caplog.at_level(logging.WARNING, logger="vgpo_verl"):
        assert settle_tracker(tmp_path) == 1
    assert f"global_step_2: {RECORD} unreadable" in caplog.text
    (step_folder(tmp_path, 1) / RECORD).write_bytes(b"\xff\xfe")  # not even text: nothing complete is left
    with pytest.raises(RuntimeError, match="no checkpoint under .* is known complete"):
        settle_tracker(tmp_path)


def test_a_marker_naming_a_complete_checkpoint_is_kept(tmp_path):
    _checkpoint(tmp_path, 1)
    _checkpoint(tmp_path, 2)
    _tracker(tmp_path, "1")  # an older one on purpose (a roll-back): still the user's choice
    assert settle_tracker(tmp_path) == 1 and (tmp_path / TRACKER).read_text() == "1"
    (tmp_path / TRACKER).unlink()  # no marker: verl trains from scratch, so do we
    assert settle_tracker(tmp_path) is None and not (tmp_path / TRACKER).exists()


@pytest.mark.parametrize("marker, why", [
    ("", "is unreadable"),  # killed between verl's truncate and write
    ("3", "names step 3, but global_step_3: no vgpo_checkpoint.json"),  # killed before our record
    ("2", "names step 2, but global_step_2: data.pt is missing"),  # damaged after its save
])
def test_a_marker_naming_anything_else_moves_to_the_newest_complete_checkpoint(tmp_path, caplog, marker, why):
    _checkpoint(tmp_path, 1)
    (_checkpoint(tmp_path, 2) / "data.pt").unlink()
    _checkpoint(tmp_path, 3, record=False)
    _tracker(tmp_path, marker)
    with caplog.at_level(logging.WARNING, logger="vgpo_verl"):
        assert settle_tracker(tmp_path) == 1
    assert (tmp_path / TRACKER).read_text() == "1"
    assert why in caplog.text and "resuming from" in caplog.text and "global_step_1" in caplog.text


def test_of_several_complete_checkpoints_the_newest_is_resumed_and_other_folders_are_ignored(tmp_path, caplog):
    for step in (1, 2, 4):
        _checkpoint(tmp_path, step)
    _checkpoint(tmp_path, 5, record=False)  # killed before our record
    backup = tmp_path / "global_step_5_backup"  # a user's copy: not a step folder of verl's
    shutil.copytree(step_folder(tmp_path, 4), backup)
    _tracker(tmp_path, "5")
    with caplog.at_level(logging.WARNING, logger="vgpo_verl"):
        assert settle_tracker(tmp_path) == 4
    assert (tmp_path / TRACKER).read_text() == "4" and "global_step_4" in caplog.text
    assert checkpoints._steps(tmp_path) == [1, 2, 4, 5]


def test_a_failed_rename_while_the_marker_is_rewritten_leaves_the_old_marker(tmp_path, monkeypatch):
    _checkpoint(tmp_path, 1)
    _checkpoint(tmp_path, 2, record=False)
    _tracker(tmp_path, "2")

    def killed_rename(src, dst):
        raise OSError("no space left on device")

    monkeypatch.setattr(checkpoints.os, "replace", killed_rename)
    with pytest.raises(OSError, match="no space left"):
        settle_tracker(tmp_path)
    assert (tmp_path / TRACKER).read_text() == "2"  # whole, the old one: the next start settles it again
    assert not list(tmp_path.glob(".*.tmp"))
    monkeypatch.undo()
    assert settle_tracker(tmp_path) == 1


def test_without_any_record_verl_decides_and_an_unreadable_marker_is_an_error(tmp_path):
    _checkpoint(tmp_path, 1, record=False)  # saved without the plugin
    _tracker(tmp_path, "1")
    assert settle_tracker(tmp_path) == 1
    _tracker(tmp_path, "")
    with pytest.raises(RuntimeError, match="write the step of a complete global_step_K folder into .*or delete it"):
        settle_tracker(tmp_path)


def test_nothing_complete_left_is_an_error_not_a_silent_restart(tmp_path):
    (_checkpoint(tmp_path, 1) / "data.pt").unlink()
    _tracker(tmp_path, "1")
    with pytest.raises(RuntimeError, match="no checkpoint under .* is known complete"):
        settle_tracker(tmp_path)


def test_a_save_into_a_folder_forgets_its_old_record_first(tmp_path):
    trainer = v1_trainer(verl_config(tmp_path))
    trainer.global_steps = 1
    trainer._save_checkpoint()
    record = step_folder(tmp_path, 1) / RECORD
    assert problem(step_folder(tmp_path, 1)) is None
    seen = {}

    def save_checkpoint(local_path, *args, **kwargs):
        seen["record during the save"] = record.exists()

    trainer.actor_rollout_wg.save_checkpoint = save_checkpoint
    trainer._save_checkpoint()
    assert seen == {"record during the save": False} and record.exists()


_KILLED_SAVE = r"""
import builtins, pathlib, sys
sys.path.insert(0, sys.argv[1])
import vgpo_verl
from _fake_trainers import Callback, Workers, v1_trainer, verl_config

checkpoint_dir, where, ready = pathlib.Path(sys.argv[2]), sys.argv[3], pathlib.Path(sys.argv[4])
workers = Workers(ready, block_step=2 if where.startswith("actor files") else None,
                  after_retention=where == "actor files done, keeping one")
keep = ["trainer.max_actor_ckpt_to_keep=1"] if where.endswith("keeping one") else []
trainer = v1_trainer(verl_config(checkpoint_dir, keep), workers,
                     Callback(workers, 2 if where.startswith("after the marker") else None))
if where == "marker write":
    real_open = builtins.open

    class HalfWritten:  # what a kill between verl's truncate and write leaves
        def __init__(self, f): self.f = f
        def __enter__(self): return self
        def __exit__(self, *exc): self.f.close()
        def write(self, text):
            if text == "2":
                workers.block()
            return self.f.write(text)

    def open_(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return HalfWritten(f) if str(path).endswith("latest_checkpointed_iteration.txt") and "w" in mode else f

    builtins.open = open_
for step in (1, 2):
    trainer.global_steps = step
    trainer.train_dataloader.position = 10 * step
    trainer._save_checkpoint()
"""


KILL_POINTS = ("actor files", "marker write", "after the marker", "after the marker, keeping one",
               "actor files done, keeping one")


@pytest.fixture(scope="module")
def killed_saves(tmp_path_factory):
    """{kill point: checkpoint directory} after SIGKILL inside the save of step 2 (the three children
    run side by side: each pays verl's import once)."""
    base = tmp_path_factory.mktemp("killed_saves")
    script = base / "killed_save.py"
    script.write_text(_KILLED_SAVE)
    children = {}
    for n, where in enumerate(KILL_POINTS):
        checkpoint_dir, ready = base / f"checkpoints{n}", base / f"in_the_save{n}"
        child = subprocess.Popen([sys.executable, str(script), str(TESTS), str(checkpoint_dir), where, str(ready)],
                                 stderr=subprocess.PIPE, text=True)
        children[where] = (child, checkpoint_dir, ready)
    try:
        deadline = time.monotonic() + 180
        for where, (child, _, ready) in children.items():
            while not ready.exists() and child.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert ready.exists(), (where, child.stderr.read() if child.poll() is not None else "never got there")
            child.send_signal(signal.SIGKILL)
    finally:
        for child, _, _ in children.values():
            child.kill()
            child.wait()
    return {where: checkpoint_dir for where, (_, checkpoint_dir, _) in children.items()}


def test_killed_before_our_record_with_one_checkpoint_kept_resumes_from_the_one_verl_finished(killed_saves, caplog):
    """trainer.max_actor_ckpt_to_keep=1: verl's retention removed global_step_1/actor when step 2's actor
    files landed, verl wrote data.pt and its marker, and the kill came in our flush-and-record step. Step 2
    is whole (verl's marker came after all of its files): it is trusted, its record completed."""
    checkpoint_dir = killed_saves["after the marker, keeping one"]
    assert not (step_folder(checkpoint_dir, 1) / "actor").exists()
    assert "is missing" in problem(step_folder(checkpoint_dir, 1))
    assert "did not finish" in problem(step_folder(checkpoint_dir, 2))
    workers = Workers()
    trainer = v1_trainer(verl_config(checkpoint_dir), workers)
    with caplog.at_level(logging.WARNING, logger="vgpo_verl"):
        trainer._load_checkpoint()
    assert trainer.global_steps == 2 and trainer.train_dataloader.position == 20
    assert workers.loaded == [str(step_folder(checkpoint_dir, 2) / "actor")]
    assert problem(step_folder(checkpoint_dir, 2)) is None  # recorded now: the next start needs no judgement
    assert "only our record was cut short" in caplog.text


def test_killed_between_verls_retention_and_its_marker_with_one_kept_says_nothing_is_left(killed_saves):
    """trainer.max_actor_ckpt_to_keep=1, killed after step 2's actor files (verl's retention has removed step
    1's) but before data.pt and the marker: no checkpoint is whole. The start refuses, saying why and how to
    go on; the start-up check warned of this (test_preflight)."""
    checkpoint_dir = killed_saves["actor files done, keeping one"]
    assert (checkpoint_dir / TRACKER).read_text() == "1" and not (step_folder(checkpoint_dir, 1) / "actor").exists()
    with pytest.raises(RuntimeError, match=r"no complete checkpoint is left .*global_step_1 was complete, but its "
                                           r"files were deleted by verl's retention .*delete .* to train from "
                                           r"scratch, and keep 2 checkpoints \(trainer.max_actor_ckpt_to_keep=2\)"):
        settle_tracker(checkpoint_dir)


def test_a_folder_written_after_the_marker_is_not_taken_for_finished(tmp_path):
    """A re-save into a step folder, killed half-way, leaves the old marker naming it: files newer than
    the marker are not verl's finished save, and nothing complete is left: the start refuses."""
    _checkpoint(tmp_path, 1)
    shutil.rmtree(step_folder(tmp_path, 1) / "actor")  # retention
    folder = _checkpoint(tmp_path, 2, record=False)
    _tracker(tmp_path, "2")
    marker_time = (tmp_path / TRACKER).stat().st_mtime_ns
    os.utime(folder / "data.pt", ns=(marker_time + 10**9, marker_time + 10**9))
    with pytest.raises(RuntimeError, match="no complete checkpoint is left .*deleted by verl's retention"):
        settle_tracker(tmp_path)
    os.utime(folder / "data.pt", ns=(marker_time, marker_time))  # verl's order: files, then the marker
    assert settle_tracker(tmp_path) == 2 and problem(folder) is None


@pytest.mark.parametrize("where", KILL_POINTS[:3])
def test_a_run_killed_mid_save_resumes_from_the_previous_complete_checkpoint(killed_saves, where):
    checkpoint_dir = killed_saves[where]
    assert problem(step_folder(checkpoint_dir, 1)) is None
    assert problem(step_folder(checkpoint_dir, 2)) is not None
    if where == "marker write":  # what verl alone makes of it: every restart fails
        assert (checkpoint_dir / TRACKER).read_text() == ""
        bare = v1_trainer(verl_config(checkpoint_dir))
        with pytest.raises(ValueError):
            type(bare)._load_checkpoint.__wrapped__(bare)

    workers = Workers()
    trainer = v1_trainer(verl_config(checkpoint_dir), workers)
    trainer._load_checkpoint()
    assert trainer.global_steps == 1
    assert workers.loaded == [str(step_folder(checkpoint_dir, 1) / "actor")]
    assert trainer.train_dataloader.position == 10
    assert (checkpoint_dir / TRACKER).read_text() == "1"


def test_async_saves_get_no_record(tmp_path):
    config = verl_config(tmp_path, ["actor_rollout_ref.actor.checkpoint.async_save=true"])
    trainer = v1_trainer(config)
    trainer.global_steps = 1
    trainer._save_checkpoint()
    assert not (step_folder(tmp_path, 1) / RECORD).exists() and not (tmp_path / TRACKER).exists()
    assert getattr(trainer, checkpoints.SAVED_STEP_ATTR, None) is None


def test_the_demos_dataloader_stand_in_matches_what_verl_saves(tmp_path):
    """The stand-in round-trips through verl's data.pt like StatefulDataLoader (torch.save of state_dict)."""
    trainer = v1_trainer(verl_config(tmp_path))
    trainer.global_steps, trainer.train_dataloader.position = 3, 7
    trainer._save_checkpoint()
    fresh = v1_trainer(verl_config(tmp_path))
    assert isinstance(fresh.train_dataloader, DataLoader)
    fresh._load_checkpoint()
    assert (fresh.global_steps, fresh.train_dataloader.position) == (3, 7)
