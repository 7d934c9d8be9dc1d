"""verl plugin entry point (`verl.plugins` group): `import verl` imports this module in every process.

It only installs post-import hooks: each piece of glue is imported when the verl module it hooks
is imported, so a process that never imports the trainer or the FSDP engine (rollout servers,
reward workers) loads none of our code. verl logs entry-point failures at DEBUG level only, so
every failure here is logged at WARNING, naming what failed.
"""

from __future__ import annotations

import importlib
import logging

from vgpo_verl._import_hooks import when_imported

logger = logging.getLogger("vgpo_verl")

# verl module -> glue to run right after that module has been imported ("module:function", or several).
POST_IMPORT_HOOKS: dict[str, str | tuple[str, ...]] = {
    "verl.trainer.ppo.core_algos": "vgpo_verl.estimator:register",
    "verl.workers.engine.fsdp.transformer_impl": "vgpo_verl.engine:register",
    "verl.trainer.ppo.v1.utils": "vgpo_verl.trainer_wiring:install_multi_trajectories",
    "verl.trainer.ppo.v1.trainer_base": ("vgpo_verl.trainer_wiring:install_v1", "vgpo_verl.checkpoints:install_v1"),
    "verl.trainer.ppo.metric_utils": "vgpo_verl.trainer_wiring:install_metrics",
    "verl.trainer.ppo.ray_trainer": ("vgpo_verl.trainer_wiring:install_legacy", "vgpo_verl.checkpoints:install_legacy",
                                     "vgpo_verl.preemption:install_legacy"),
    # long runs: resume only from complete checkpoints (vgpo_verl.checkpoints), stop when asked (vgpo_verl.preemption)
    "verl.trainer.ppo.v1": "vgpo_verl.preemption:install_v1",
    # opt-in per-sample rollout seeds (actor_rollout_ref.rollout.custom.seed_per_sample)
    "verl.experimental.agent_loop.agent_loop": "vgpo_verl.rollout_seeds:install",
    # every PPO entry point's first call in the driver: the start-up checks (vgpo_verl.preflight)
    "verl.utils.device": "vgpo_verl.preflight:install",
}

_ran: set[str] = set()


def _run_hook(verl_module: str) -> None:
    targets = POST_IMPORT_HOOKS[verl_module]
    for target in (targets,) if isinstance(targets, str) else targets:
        _run_target(verl_module, target)


def _run_target(verl_module: str, target: str) -> None:
    if target in _ran:
        return
    _ran.add(target)
    module_name, func_name = target.split(":")
    try:
        getattr(importlib.import_module(module_name), func_name)()
    except Exception:
        logger.warning(
            "vgpo-verl: %s failed after %s was imported; VGPO is NOT available in this process. "
            "Check that vgpo-verl and verl 0.9.x are installed together (`make install`); traceback:",
            target,
            verl_module,
            exc_info=True,
        )


def install() -> None:
    """Hook every module in POST_IMPORT_HOOKS; modules imported already are handled at once."""
    for verl_module in POST_IMPORT_HOOKS:
        when_imported(verl_module, lambda _module, name=verl_module: _run_hook(name))


try:
    install()
except Exception:  # verl would hide this at DEBUG level
    logger.warning("vgpo-verl: installing the verl plugin failed; VGPO is NOT available", exc_info=True)
