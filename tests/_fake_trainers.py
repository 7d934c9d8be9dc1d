"""verl's own trainer classes without Ray or models, for the checkpoint and stop tests.

`v1_trainer(config)` is a real `PPOTrainerSync` (verl's v1 sync trainer: its `fit`, `_save_checkpoint`,
`_load_checkpoint`, `on_step_end` as verl wrote them, wrapped by the plugin) built without its
`__init__`: the worker group, the weight sync and the dataloader are the stand-ins below, and
`step` / `_compute_metrics` (rollouts, PPO) are replaced by `FakeStep`.
"""

from __future__ import annotations

import os
import shutil
import pathlib
import time


def verl_config(checkpoint_dir: pathlib.Path, overrides: list[str] = ()):
    """verl's ppo_trainer config (Hydra, as main_ppo composes it) saving into checkpoint_dir."""
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        return compose(config_name="ppo_trainer", overrides=[
            f"trainer.default_local_dir={checkpoint_dir}", "trainer.logger=[file]", "trainer.val_before_train=false",
            "trainer.test_freq=-1", "trainer.save_freq=-1", *overrides])


class Workers:
    """The actor worker group: `save_checkpoint` writes each rank's files as verl's FSDP checkpoint
    manager names them; `block(step, where)` makes the save of `step` stop there (for a kill)."""

    def __init__(self, ready: pathlib.Path | None = None, block_step: int | None = None, after_retention=False):
        self.loaded: list[str] = []
        self.saved: list[int] = []
        self.saved_paths: list[str] = []
        self.ready, self.block_step, self.after_retention = ready, block_step, after_retention

    def block(self) -> None:
        self.ready.touch()
        time.sleep(600)

    def save_checkpoint(self, local_path, hdfs_path=None, global_step=0, max_ckpt_to_keep=None):
        os.makedirs(local_path, exist_ok=True)
        for kind in ("model", "optim", "extra_state"):
            with open(os.path.join(local_path, f"{kind}_world_size_1_rank_0.pt"), "wb") as f:
                f.write(os.urandom(1 << 16))
                if kind == "optim" and global_step == self.block_step and not self.after_retention:
                    f.flush()
                    self.block()  # half of the actor's files are on disk
        self.saved.append(global_step)
        # verl's retention once the new files are written (BaseCheckpointManager.register_checkpoint, rank 0):
        # beyond trainer.max_actor_ckpt_to_keep, the oldest actor folders go
        self.saved_paths.append(local_path)
        if max_ckpt_to_keep and len(self.saved_paths) > max_ckpt_to_keep:
            for old in self.saved_paths[:-max_ckpt_to_keep]:
                shutil.rmtree(old, ignore_errors=True)
            self.saved_paths = self.saved_paths[-max_ckpt_to_keep:]
        if global_step == self.block_step and self.after_retention:
            self.block()  # the actor's files are whole, the older ones gone; data.pt and the marker not yet

    def load_checkpoint(self, local_path, hdfs_path=None, del_local_after_load=False):
        self.loaded.append(local_path)


class WeightSync:
    def __init__(self):
        self.synced: list[int] = []

    def update_weights(self, global_steps):
        self.synced.append(global_steps)


class DataLoader:
    """The dataloader's position: state_dict / load_state_dict, as StatefulDataLoader offers them."""

    def __init__(self):
        self.position = 0

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]


class Callback:
    def __init__(self, workers: Workers | None = None, block_step: int | None = None):
        self.workers, self.block_step = workers, block_step

    def on_save(self, trainer, global_step, checkpoint_dir, async_save):
        if global_step == self.block_step:
            self.workers.block()  # after verl wrote its marker


class FakeStep:
    """PPOTrainer.step and _compute_metrics: one dataloader position per step, the metrics verl logs."""

    def __init__(self, trainer, on_step=None):
        self.trainer, self.on_step = trainer, on_step

    def step(self, metrics, timing_raw):
        from transfer_queue import KVBatchMeta

        self.trainer.train_dataloader.position += 1
        if self.on_step is not None:
            self.on_step(self.trainer.global_steps)
        return KVBatchMeta(partition_id="train", keys=[f"k{self.trainer.global_steps}"], tags=[{}])

    def compute_metrics(self, batch, metrics, timing_raw, global_steps, epoch):
        metrics.update({"training/global_step": global_steps, "training/epoch": epoch})


def v1_trainer(config, workers: Workers | None = None, callback: Callback | None = None, steps: int = 4):
    """A PPOTrainerSync over the stand-ins, `steps` training steps of one epoch."""
    from verl.trainer.ppo import v1

    trainer_class = v1.get_trainer_cls("sync")  # as main_ppo gets it (the plugin wraps its on_step_end)
    trainer = trainer_class.__new__(trainer_class)
    trainer.config = config
    trainer.trainer_mode = "sync"
    trainer.use_critic = trainer.use_reference_policy = False
    trainer.actor_rollout_wg = workers or Workers()
    trainer.checkpoint_manager = WeightSync()
    trainer.checkpoint_callback = callback or Callback()
    trainer.train_dataloader = DataLoader()
    trainer.global_steps = 0
    trainer.steps_per_epoch = trainer.total_training_steps = steps
    trainer._init_dump_executor()
    return trainer
