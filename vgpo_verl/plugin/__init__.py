"""The verl glue: everything that hooks verl 0.9.x. This package is the `verl.plugins` entry point
(`import verl` imports it in every process; `actor_rollout_ref.model.external_lib=vgpo_verl` and
VERL_USE_EXTERNAL_MODULES=vgpo_verl.plugin load it where entry points are off).

Importing it only installs post-import hooks (stdlib only, cheap): each piece of glue is imported when
the verl module it hooks is imported, so a process that never imports the trainer or the FSDP engine
(rollout servers, reward workers) loads none of our code. verl logs entry-point failures at DEBUG level
only, so every failure here is logged at WARNING, naming what failed.

Its modules: `estimator` and `method_table` (our estimators in verl's registry, and what each needs
from the old-log-prob pass), `scoring_engine` (what our engines add to verl's), `engine` and
`engine_veomni` (verl's FSDP and VeOmni engines with it), `trainer_wiring` (the trainers'
old-log-prob and advantage steps), `preflight` and `model_check` (start-up checks in the driver),
`checkpoints`, `preemption`, `rollout_seeds`, `timing`, `dump`, `tracking` (the forgetting chart in
W&B / TensorBoard), `families` (the family table),
`config_value`, `_import_hooks`.

May import: verl, Ray, torch, transformers, vgpo_verl.methods. Never the tools above it (demo, doctor,
data, evaluate, analyze, cpu, cli, knobs, reward, report): the contracts in .importlinter say so.
"""

from __future__ import annotations

import importlib
import logging

from vgpo_verl.plugin._import_hooks import when_imported

logger = logging.getLogger("vgpo_verl")

# verl module -> glue to run right after that module has been imported ("module:function", or several).
POST_IMPORT_HOOKS: dict[str, str | tuple[str, ...]] = {
    "verl.trainer.ppo.core_algos": "vgpo_verl.plugin.estimator:register",
    "verl.workers.engine.fsdp.transformer_impl": "vgpo_verl.plugin.engine:register",
    # where the `veomni` package is installed (verl imports its VeOmni engine only then)
    "verl.workers.engine.veomni.transformer_impl": "vgpo_verl.plugin.engine_veomni:register",
    "verl.trainer.ppo.v1.utils": "vgpo_verl.plugin.trainer_wiring:install_multi_trajectories",
    "verl.trainer.ppo.v1.trainer_base": ("vgpo_verl.plugin.trainer_wiring:install_v1",
                                         "vgpo_verl.plugin.checkpoints:install_v1"),
    "verl.trainer.ppo.metric_utils": "vgpo_verl.plugin.trainer_wiring:install_metrics",
    "verl.trainer.ppo.ray_trainer": ("vgpo_verl.plugin.trainer_wiring:install_legacy",
                                     "vgpo_verl.plugin.checkpoints:install_legacy",
                                     "vgpo_verl.plugin.preemption:install_legacy"),
    # long runs: resume only from complete checkpoints (checkpoints), stop when asked (preemption)
    "verl.trainer.ppo.v1": "vgpo_verl.plugin.preemption:install_v1",
    # opt-in per-sample rollout seeds (actor_rollout_ref.rollout.custom.seed_per_sample)
    "verl.experimental.agent_loop.agent_loop": "vgpo_verl.plugin.rollout_seeds:install",
    # the forgetting curve as a chart in W&B / TensorBoard, where the trainer holds verl's tracker
    "verl.utils.tracking": "vgpo_verl.plugin.tracking:install",
    # every PPO entry point's first call in the driver: the start-up checks (preflight)
    "verl.utils.device": "vgpo_verl.plugin.preflight:install",
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
