"""Stop a training run cleanly at the end of a step when asked: finish the step, save, return.

The ask is a file (the stop request) whose path is in the environment variable VGPO_STOP_FILE of
the trainer's process; examples/slurm/run_vgpo.slurm writes it when Slurm warns of the time limit
(USR1) or preempts the job (TERM), on the run directory every node sees. Without the variable,
nothing here does anything.

At the end of every training step the trainer looks for the file. When it is there:
1. the step's checkpoint is saved, unless verl saved this step already (`trainer.save_freq`);
2. the trainer writes the answer `<request>.stopped` (JSON: {"step": K, "checkpoint": ".../global_step_K"})
   and stops: main_ppo returns normally (exit 0) after the step's metrics are logged;
3. the next start (`trainer.resume_mode=auto`, verl's default) resumes from global_step_K.
At the last step the run simply ends (no answer): nothing is left to resume, so nothing to requeue.
Whoever starts the trainer removes an old request and answer first (the launcher does).

Where "the end of a step" is:
- v1 PPOTrainer (`trainer.use_v1=true`): its `on_step_end`, called after verl's own save and before
  the step's metrics are logged; stopping sets `total_training_steps` to this step, so verl's loop
  ends by its own condition. The hook sits on the class `verl.trainer.ppo.v1.get_trainer_cls`
  returns (main_ppo's only way to the trainer), as each trainer mode overrides `on_step_end`.
- legacy RayPPOTrainer (`trainer.use_v1=false`): its loop has no step hook; the last call of a
  step (after logging and `global_steps += 1`) is `train_dataset.on_batch_end(batch=...)` when the
  dataset has one, so `fit` gives the dataset one for the duration of the run (chaining its own),
  and leaves verl's loop by an exception that `fit` catches.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib

STOP_FILE_VAR = "VGPO_STOP_FILE"
ANSWER_SUFFIX = ".stopped"


def request_path() -> pathlib.Path | None:
    value = os.environ.get(STOP_FILE_VAR, "").strip()
    return pathlib.Path(value) if value else None


def answer_path(request: pathlib.Path) -> pathlib.Path:
    return request.with_name(request.name + ANSWER_SUFFIX)


def stop_requested() -> bool:
    request = request_path()
    return request is not None and request.exists()


def _answer(request: pathlib.Path, step: int, checkpoint: pathlib.Path) -> None:
    from vgpo_verl.plugin.checkpoints import write_atomically

    write_atomically(answer_path(request), json.dumps({"step": step, "checkpoint": str(checkpoint)}))


def _save_unless_saved(trainer, step: int) -> pathlib.Path:
    """global_step_{step}, saved now unless verl's own save of this step completed already."""
    from vgpo_verl.plugin.checkpoints import SAVED_STEP_ATTR, checkpoint_dir_of, step_folder

    if getattr(trainer, SAVED_STEP_ATTR, None) != step:
        print(f"vgpo-verl: stop requested ({request_path()}): saving step {step}", flush=True)
        trainer._save_checkpoint()
    return step_folder(checkpoint_dir_of(trainer.config), step)


def end_of_step(trainer, step: int, last_step: bool) -> bool:
    """Run at the end of training step `step` (with `trainer.global_steps == step`); True: stop now."""
    if not stop_requested() or last_step:
        return False
    checkpoint = _save_unless_saved(trainer, step)
    _answer(request_path(), step, checkpoint)
    print(f"vgpo-verl: stopped after step {step} as requested; {checkpoint} resumes it", flush=True)
    return True


# ---------------------------------------------------------------- v1 trainer


def _wrap_v1_step_end(original):
    @functools.wraps(original)
    def on_step_end(self):
        if end_of_step(self, self.global_steps, last_step=self.global_steps >= self.total_training_steps):
            self.total_training_steps = self.global_steps  # verl's `while` ends after this step
        return original(self)

    return on_step_end


def _wrap_get_trainer_cls(original):
    @functools.wraps(original)
    def get_trainer_cls(name):
        from vgpo_verl.plugin.trainer_wiring import _wrap

        cls = original(name)
        owner = next(c for c in cls.__mro__ if "on_step_end" in vars(c))
        _wrap(owner, "on_step_end", _wrap_v1_step_end)
        return cls

    return get_trainer_cls


def install_v1() -> None:
    """Wrap `verl.trainer.ppo.v1.get_trainer_cls` (run when the package verl.trainer.ppo.v1 is imported)."""
    from verl.trainer.ppo import v1

    from vgpo_verl.plugin.trainer_wiring import _wrap

    _wrap(v1, "get_trainer_cls", _wrap_get_trainer_cls)


# ---------------------------------------------------------------- legacy trainer


class _StopAfterStep(Exception):
    """Leaves the legacy fit loop after a requested stop (caught by the wrapped `fit`)."""


def _legacy_batch_end(trainer, own_hook):
    def on_batch_end(*args, **kwargs):
        if own_hook is not None:
            own_hook(*args, **kwargs)
        step = trainer.global_steps - 1  # verl counted the step already
        if stop_requested():
            trainer.global_steps = step  # the folder name and the step's own state, as verl's save sees them
            try:
                stop = end_of_step(trainer, step, last_step=False)  # verl returned before this on its last step
            finally:
                trainer.global_steps = step + 1
            if stop:
                raise _StopAfterStep(step)

    return on_batch_end


def _wrap_legacy_fit(original):
    @functools.wraps(original)
    def fit(self, *args, **kwargs):
        if request_path() is None:
            return original(self, *args, **kwargs)
        dataset = self.train_dataset
        own_hook = vars(dataset).get("on_batch_end")
        dataset.on_batch_end = _legacy_batch_end(self, getattr(dataset, "on_batch_end", None))
        try:
            return original(self, *args, **kwargs)
        except _StopAfterStep:
            self._shutdown_dump_executor()  # what verl's loop does on its way out
            return None
        finally:
            if own_hook is None:
                del dataset.on_batch_end
            else:
                dataset.on_batch_end = own_hook

    return fit


def install_legacy() -> None:
    """Wrap the legacy RayPPOTrainer's fit (run when verl.trainer.ppo.ray_trainer is imported)."""
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer

    from vgpo_verl.plugin.trainer_wiring import _wrap

    _wrap(RayPPOTrainer, "fit", _wrap_legacy_fit)
