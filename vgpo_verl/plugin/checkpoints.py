"""Resume only from complete checkpoints: a completion record per checkpoint, checked before resuming.

What verl 0.9.1 writes (`_save_checkpoint` of the v1 PPOTrainer and of the legacy RayPPOTrainer),
into `trainer.default_local_dir`:

    global_step_K/actor/      every rank: model_, optim_, extra_state_world_size_W_rank_R.pt (weights,
                              optimizer, lr scheduler + RNG); rank 0: huggingface/ (config,
                              tokenizer), fsdp_config.json. The worker call returns once every rank
                              has written (a barrier).
    global_step_K/data.pt     the dataloader's position (the driver), then, in async v1 modes,
                              global_step_K/transfer_queue/
    latest_checkpointed_iteration.txt   "K", written last; `trainer.resume_mode=auto` follows it.

So the marker never names a save still in progress. What it does not guarantee, and this module adds:
- the marker is rewritten in place (truncate, then write): a kill in between leaves it empty, and
  every restart then fails in verl's `find_latest_ckpt_path` (int of an empty string);
- nothing is flushed before the marker: after a node crash it can name files the page cache never
  wrote (empty or short);
- a folder damaged after its save (a retention cleanup, a re-save into the same global_step folder
  killed half-way) is still trusted.

Added (installed by vgpo_verl.plugin; the record format is below):
- after verl's save returns: every file of global_step_K is flushed (fsync), then
  `global_step_K/vgpo_checkpoint.json` is written atomically (temporary file, fsync, rename, fsync
  of the folder). Before a save into a folder, its old record is removed first.
- before verl's `_load_checkpoint` with resume_mode=auto (`settle_tracker`): a marker naming a
  folder whose record does not check out (every file it lists present, with its size), or an
  unreadable marker, is rewritten (atomically) to the newest complete checkpoint, with a WARNING
  saying why. A directory where no folder carries a record (saved without this plugin) is left to verl.
  When no complete checkpoint is left (`trainer.max_actor_ckpt_to_keep=1`: verl's retention removed the
  previous actor folder as soon as the new one's files landed) and the marker names a folder without a
  record whose every file is older than the marker, that folder is trusted: verl writes the marker
  last, after its save returned on every rank, so only our record step was cut short (a kill of the
  process; a node crash could still have lost unflushed pages). Its record is completed then. With
  two or more checkpoints kept, no sequence of kills leaves a run that no restart can continue. With
  one, verl deletes the old checkpoint before the new one is whole: a kill in that window leaves none,
  which no code can undo. The start-up check warns of it, and the refusal then says so and how to go on.
- skipped with `actor_rollout_ref.actor.checkpoint.async_save` (verl then writes no marker either:
  the save is not finished when the call returns).

Record (JSON): {"step": K, "files": {"relative/path": size_in_bytes, ...}}.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import pathlib

logger = logging.getLogger("vgpo_verl")

RECORD = "vgpo_checkpoint.json"
TRACKER = "latest_checkpointed_iteration.txt"  # verl's marker (verl.utils.checkpoint.checkpoint_manager)
STEP_PREFIX = "global_step_"
SAVED_STEP_ATTR = "_vgpo_saved_step"  # on the trainer: the global step of its last completed save


def write_atomically(path: pathlib.Path, text: str) -> None:
    """Replace `path` by `text` so that a reader, even after a kill or a crash, sees the old or the new content."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # after the rename there is nothing to remove; after a failure, no litter
    _fsync_dir(path.parent)


def _fsync_dir(folder: pathlib.Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def step_folder(checkpoint_dir: pathlib.Path, step: int) -> pathlib.Path:
    return pathlib.Path(checkpoint_dir) / f"{STEP_PREFIX}{step}"


def _files(folder: pathlib.Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != RECORD}


def record_complete(folder: pathlib.Path, step: int) -> pathlib.Path:
    """Flush every file of a finished save to disk, then record it as complete; returns the record."""
    folder = pathlib.Path(folder)
    files = _files(folder)
    for name in files:
        fd = os.open(folder / name, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for sub in {(folder / name).parent for name in files}:
        _fsync_dir(sub)
    record = folder / RECORD
    write_atomically(record, json.dumps({"step": int(step), "files": files}, indent=1))
    return record


def forget(folder: pathlib.Path) -> None:
    """Remove a folder's record before anything is written into it again."""
    record = pathlib.Path(folder) / RECORD
    if record.exists():
        record.unlink()
        _fsync_dir(record.parent)


def problem(folder: pathlib.Path) -> str | None:
    """Why `folder` is not a complete checkpoint, or None when its record checks out."""
    record = pathlib.Path(folder) / RECORD
    try:
        files = _recorded_files(record)
    except FileNotFoundError:
        return f"no {RECORD} (its save did not finish)"
    except ValueError as error:
        return f"{RECORD} unreadable ({error})"
    for name, size in files.items():
        path = pathlib.Path(folder) / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} when saved"
    return None


def _recorded_files(record: pathlib.Path) -> dict[str, int]:
    """The {relative path: size} a record lists; ValueError naming what is wrong with any other content
    (a record is read after kills and by hand edits: no shape of it may crash a restart)."""
    try:
        content = json.loads(record.read_text())
    except UnicodeDecodeError as error:
        raise ValueError(f"not text: {error}") from error
    files = content.get("files") if isinstance(content, dict) else None
    if not isinstance(files, dict):
        raise ValueError(f'"files" is {files!r}, not an object of file sizes' if isinstance(content, dict)
                         else f"holds {type(content).__name__} {content!r}, not an object")
    for name, size in files.items():
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f'"files"[{name!r}] is {size!r}, not a size in bytes')
    return files


def _steps(checkpoint_dir: pathlib.Path) -> list[int]:
    found = []
    for entry in pathlib.Path(checkpoint_dir).glob(f"{STEP_PREFIX}*"):
        suffix = entry.name[len(STEP_PREFIX):]
        if entry.is_dir() and suffix.isdigit():
            found.append(int(suffix))
    return sorted(found)


def latest_complete(checkpoint_dir: pathlib.Path) -> int | None:
    """The largest K whose global_step_K is a complete checkpoint, or None."""
    complete = [k for k in _steps(checkpoint_dir) if problem(step_folder(checkpoint_dir, k)) is None]
    return complete[-1] if complete else None


def read_tracker(checkpoint_dir: pathlib.Path) -> int | None:
    """verl's marker as a step; None when missing; ValueError when unreadable."""
    path = pathlib.Path(checkpoint_dir) / TRACKER
    if not path.exists():
        return None
    text = path.read_text().strip()
    if not text.isdigit():
        raise ValueError(f"{path} holds {text!r}, not a step number")
    return int(text)


def _finished_by_verl(folder: pathlib.Path, tracker: pathlib.Path) -> bool:
    """Whether verl's marker was written after every file of `folder`, which has no record: verl writes
    the marker last, once its save returned on every rank, so such a folder was saved whole and only our
    flush-and-record step after it did not finish. A record that is there but wrong, or any file newer
    than the marker (a re-save into the folder, killed half-way), is not trusted."""
    if (folder / RECORD).exists() or not folder.is_dir():
        return False
    files = [p for p in folder.rglob("*") if p.is_file()]
    return bool(files) and max(p.stat().st_mtime_ns for p in files) <= tracker.stat().st_mtime_ns


def _recorded(checkpoint_dir: pathlib.Path) -> bool:
    return any((step_folder(checkpoint_dir, k) / RECORD).exists() for k in _steps(checkpoint_dir))


def settle_tracker(checkpoint_dir: pathlib.Path) -> int | None:
    """Make verl's marker name a complete checkpoint; returns the step resume_mode=auto will load
    (None: training starts from scratch).

    Kept as it is: a marker naming a complete checkpoint (also an older one: a deliberate roll-back),
    a missing marker (from scratch, as verl does), and any marker in a directory where no folder
    carries a record (saved without this plugin: verl decides). Otherwise (the marker names a folder
    without a valid record, or is unreadable) it is rewritten to the newest complete checkpoint.
    RuntimeError when that leaves nothing to resume from, naming the marker and what to do.
    """
    checkpoint_dir = pathlib.Path(checkpoint_dir)
    tracker = checkpoint_dir / TRACKER
    try:
        named = read_tracker(checkpoint_dir)
    except ValueError as error:
        named = error
    if named is None:
        return None
    recorded = _recorded(checkpoint_dir)
    if isinstance(named, int):
        why = problem(step_folder(checkpoint_dir, named)) if recorded else None
        if why is None:
            return named
        why = f"names step {named}, but {step_folder(checkpoint_dir, named).name}: {why}"
    else:
        why = f"is unreadable ({named})"
    chosen = latest_complete(checkpoint_dir) if recorded else None
    if chosen is None and isinstance(named, int) and _finished_by_verl(step_folder(checkpoint_dir, named), tracker):
        record_complete(step_folder(checkpoint_dir, named), named)
        logger.warning("vgpo-verl: %s %s, and no other checkpoint is complete (verl's retention, "
                       "trainer.max_actor_ckpt_to_keep, removed the older ones). verl wrote the marker after every "
                       "file of that folder, so its save finished and only our record was cut short: its record is "
                       "completed now and the run resumes from it. (After a node crash, rather than a killed "
                       "process, its files may not all have reached the disk.)", tracker, why)
        return named
    if chosen is None:
        emptied = [k for k in _steps(checkpoint_dir) if (step_folder(checkpoint_dir, k) / RECORD).exists()
                   and not (step_folder(checkpoint_dir, k) / "actor").exists()]
        if emptied:  # recorded once, its actor folder gone since: verl's retention ran before the next save was whole
            raise RuntimeError(
                f"{tracker} {why}, and no complete checkpoint is left under {checkpoint_dir}: "
                f"{step_folder(checkpoint_dir, emptied[-1]).name} was complete, but its files were deleted by "
                "verl's retention (trainer.max_actor_ckpt_to_keep=1 removes it as soon as the next save's actor "
                "files land) and the next save did not finish. Nothing can be resumed: delete "
                f"{tracker} to train from scratch, and keep 2 checkpoints (trainer.max_actor_ckpt_to_keep=2) in "
                "runs that can be killed")
        raise RuntimeError(f"{tracker} {why}, and no checkpoint under {checkpoint_dir} is known complete (none "
                           f"carries a valid {RECORD}): write the step of a complete global_step_K folder into "
                           f"{tracker}, or delete it to train from scratch")
    write_atomically(tracker, str(chosen))
    logger.warning("vgpo-verl: %s %s; resuming from %s, the newest complete checkpoint",
                   tracker, why, step_folder(checkpoint_dir, chosen))
    return chosen


# ---------------------------------------------------------------- verl glue


def checkpoint_dir_of(config) -> pathlib.Path:
    """trainer.default_local_dir, resolved like verl's _load_checkpoint does (relative: to the cwd)."""
    return pathlib.Path(os.path.abspath(str(config.trainer.default_local_dir)))


def _async_save(config) -> bool:
    checkpoint = config.actor_rollout_ref.actor.get("checkpoint", None) or {}
    return bool(checkpoint.get("async_save", False))


def _wrap_save(original):
    @functools.wraps(original)
    def _save_checkpoint(self, *args, **kwargs):
        folder = step_folder(checkpoint_dir_of(self.config), self.global_steps)
        if _async_save(self.config):
            return original(self, *args, **kwargs)
        forget(folder)
        result = original(self, *args, **kwargs)
        record_complete(folder, self.global_steps)
        setattr(self, SAVED_STEP_ATTR, self.global_steps)
        return result

    return _save_checkpoint


def _wrap_load(original):
    @functools.wraps(original)
    def _load_checkpoint(self, *args, **kwargs):
        if self.config.trainer.resume_mode == "auto":
            step = settle_tracker(checkpoint_dir_of(self.config))
            if step is not None:
                print(f"vgpo-verl: resuming from {step_folder(checkpoint_dir_of(self.config), step)}", flush=True)
        return original(self, *args, **kwargs)

    return _load_checkpoint


def _install(trainer_class) -> None:
    from vgpo_verl.plugin.trainer_wiring import _wrap

    _wrap(trainer_class, "_save_checkpoint", _wrap_save)
    _wrap(trainer_class, "_load_checkpoint", _wrap_load)


def install_v1() -> None:
    """Wrap the v1 PPOTrainer's save and load (run when verl.trainer.ppo.v1.trainer_base is imported)."""
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    _install(PPOTrainer)


def install_legacy() -> None:
    """Wrap the legacy RayPPOTrainer's save and load (run when verl.trainer.ppo.ray_trainer is imported)."""
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer

    _install(RayPPOTrainer)
