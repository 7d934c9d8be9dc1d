"""Refuse setups the scoring engine cannot serve, in the driver, before Ray, workers or models start.

Which estimators need the scores (the one registry; other estimators register here):

    from vgpo_verl.plugin.preflight import register_scoring_estimator, requires_scoring_pass
    register_scoring_estimator("my_estimator", validate=my_validate)  # validate(algorithm_config) or None
    requires_scoring_pass("vgpo")  # True: the flagged old-log-prob pass must run and be scored

An estimator registered here gets every start-up check below; `validate` receives verl's `algorithm`
config and raises ValueError naming the offending `algorithm.<...>` key. Estimators that reuse the
flagged old-log-prob pass (the engine's scores) must register here, or a run with an unsupported
strategy, device or bypass mode fails only after a whole rollout. Every other estimator is refused
only for the stop path's async save (last below), and one warning applies to all: filter_groups on a
trainer that ignores it.

When: verl's three PPO entry points (verl.trainer.main_ppo, and the experimental
fully_async_policy.fully_async_main and one_step_off_policy.main_ppo) all start with
`auto_set_device(config)` in the driver, right after Hydra composed the config and before
`run_ppo` calls `ray.init`. The plugin wraps `verl.utils.device.auto_set_device` when verl imports
that module (during `import verl`, before any entry point binds the name); the wrapper runs verl's
function, then `check(config, entry)`, where `entry` is the module of the calling `main`. Cost: a
few config reads, no model download, no worker.

What is checked, for estimators in the registry (each refusal names its dotted key and what to set).
Each estimator gets only the checks its needs imply (`needs_engine` at registration: vgpo and vppo
add outputs in the scoring engine, entropy_shaping reads only verl's own `entropy`, which every engine
writes; see the table in vgpo_verl.plugin.method_table):
- the estimator's own knobs (`algorithm.vgpo.*` through VGPOConfig for vgpo);
- needs_engine only: `actor_rollout_ref.actor.strategy`: fsdp, fsdp2 or veomni (the scoring engines
  subclass verl's FSDP and VeOmni engines); with veomni, `actor_rollout_ref.actor.veomni.ulysses_parallel_size`
  1 (VeOmni's sequence parallelism has not run with the scores: its attention is a flash kernel) and,
  for Qwen3.5, `actor_rollout_ref.model.use_remove_padding=true` (VeOmni's Qwen3.5 layers need the
  packed sequence boundaries);
- needs_engine only: the engine key the actor will resolve, (device, vendor) from verl's platform and the
  VERL_ENGINE_DEVICE / VERL_ENGINE_VENDOR overrides (driver environment, then
  `ray_kwargs.ray_init.runtime_env.env_vars`): the scoring engine is registered for ("cuda", "nvidia")
  only (vgpo_verl.cpu's platform resolves to it too). A driver without an accelerator reads as
  nvidia (verl's own fallback), so a CPU-only head node is not refused;
- `algorithm.rollout_correction.bypass_mode`: must be false (bypass skips the old-log-prob pass; the
  experimental fully_async / one_step_off configs default it to true);
- the trainer kind: v1 (`trainer.use_v1=true`, any of verl's trainer modes) and the legacy trainer
  run the wrapped old-log-prob and advantage methods; a `trainer.v1.trainer_mode` we do not know is
  let through with a warning. The experimental fully_async / one_step_off trainers are refused:
  they call the same wrapped methods (tests/test_trainer_wiring.py), but they roll out on a separate
  GPU pool and sync weights through a GPU checkpoint engine, so no run of ours holds them end to end
  (EXPERIMENTAL_NOT_RUN);
- the plugin reaching the TaskRunner and workers (all: the estimator and the trainer wiring live in
  the plugin): VERL_USE_EXTERNAL_PLUGINS=none (or a list without `vgpo`) needs
  VERL_USE_EXTERNAL_MODULES naming vgpo_verl.plugin (the Slurm script's fallback) or
  `actor_rollout_ref.model.external_lib=vgpo_verl` (that module, or a list naming it).

For every estimator (the stop path of long runs, vgpo_verl.plugin.preemption, serves them all): a stop
file (VGPO_STOP_FILE, which the Slurm script sets) with `actor_rollout_ref.actor.checkpoint.async_save=true`
is refused, since verl records no async save for `resume_mode=auto` to find. Also for every estimator,
with `actor_rollout_ref.actor.strategy=veomni`: a local checkpoint storing one tensor per expert, which
VeOmni 0.1.12 would skip (vgpo_verl.plugin.model_check.veomni_checkpoint_problems).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from vgpo_verl.plugin.config_value import config_value
from vgpo_verl.plugin.model_check import actor_model_type, model_problems, veomni_checkpoint_problems

logger = logging.getLogger("vgpo_verl")

# Engine keys (device, vendor) the scoring engine is registered under (vgpo_verl.plugin.engine registers them).
SCORING_ENGINE_KEYS: tuple[tuple[str, str], ...] = (("cuda", "nvidia"),)
SCORING_STRATEGIES = ("fsdp", "fsdp2", "veomni")  # veomni: vgpo_verl.plugin.engine_veomni
# What the refusal adds for verl's other engines (TorchTitan's reason: tests/test_preflight.py checks it holds).
ENGINE_NOTES = {
    "megatron": " (Megatron: the design, not run yet, is in docs/megatron.md)",
    "torchtitan": (" (TorchTitan: verl 0.9.1 trains no VLM on it: its engine maps text model types only, "
                   "verl/workers/engine/torchtitan/utils.py, and passes no images yet, 'multimodal is not yet "
                   "supported for Torchtitan engine' in its transformer_impl.py)"),
}
# Name of our entry point in the `verl.plugins` group (setup.py).
PLUGIN_ENTRY_POINT = "vgpo"
# verl's v1 trainer modes (verl/trainer/ppo/v1/trainer_{sync,colocate_async,separate_async}.py):
# subclasses of PPOTrainer that keep the wrapped _compute_old_log_prob / _compute_advantage.
KNOWN_V1_MODES = ("sync", "colocate_async", "separate_async")

# Calling `main` module -> trainer kind (None: the kind follows trainer.use_v1).
ENTRY_POINTS: dict[str, str | None] = {
    "verl.trainer.main_ppo": None,
    "verl.experimental.fully_async_policy.fully_async_main": "fully_async",
    "verl.experimental.one_step_off_policy.main_ppo": "one_step_off",
}
# Trainers without verl's DAPO dynamic sampling (only the v1 replay buffer implements filter_groups).
IGNORES_FILTER_GROUPS = ("legacy", "fully_async", "one_step_off")
# Why the experimental trainers are refused (checked by tests/test_preflight.py against verl as installed).
EXPERIMENTAL_NOT_RUN = (
    "is not run end to end by vgpo-verl in verl's experimental trainers: they roll out on a separate GPU pool "
    "and sync weights through actor_rollout_ref.rollout.checkpoint_engine.backend=nccl (verl's "
    "NCCLCheckpointEngine imports cupy and NCCL; without a GPU only the colocated 'naive' engine exists), so "
    "no test here holds the old-log-prob pass it reads; use verl.trainer.main_ppo with "
    "trainer.v1.trainer_mode=colocate_async (asynchronous rollout, run end to end) or separate_async "
    "(separate pools, GPU only; its old-log-prob pass is tested on our engine), docs/cluster.md."
)

_SCORING_ESTIMATORS: dict[str, Callable[[Any], None] | None] = {}
_NEEDS_ENGINE: dict[str, bool] = {}
_warned: set[str] = set()


class UnsupportedSetupError(ValueError):
    """The configuration asks for something the scoring engine cannot do; the message says what to set."""


def register_scoring_estimator(name: str, validate: Callable[[Any], None] | None = None,
                               needs_engine: bool = True) -> None:
    """Declare that estimator `name` needs verl's old-log-prob pass (and, with needs_engine, the
    scoring engine's outputs from it).

    Args:
        name: the `algorithm.adv_estimator` value.
        validate: called with verl's `algorithm` config at start-up; raises ValueError naming the key.
        needs_engine: the estimator reads outputs only vgpo-verl's FSDP engine writes (vgpo's scores,
            vppo's perturbed log-probs): the FSDP strategy and NVIDIA engine-key checks apply. False
            for an estimator that reads only fields every verl engine writes (entropy_shaping).
    """
    _SCORING_ESTIMATORS[str(name)] = validate
    _NEEDS_ENGINE[str(name)] = bool(needs_engine)


def requires_scoring_pass(estimator: str) -> bool:
    """Whether `algorithm.adv_estimator=<estimator>` needs the scoring engine's old-log-prob pass."""
    return str(estimator) in _SCORING_ESTIMATORS


def _validate_vgpo(algorithm_config: Any) -> None:
    from vgpo_verl.methods.vgpo import VGPOConfig

    try:
        VGPOConfig.from_mapping(config_value(algorithm_config, "vgpo"))
    except ValueError as error:  # name the key as the user types it
        raise ValueError(str(error).replace("VGPOConfig.", "algorithm.vgpo.")) from error


register_scoring_estimator("vgpo", _validate_vgpo)


def _register_comparison_methods() -> None:
    """entropy_shaping and vppo (vgpo_verl.plugin.method_table): their knobs, and the old-log-prob pass they read
    (vppo: the engine's perturbed forward; entropy_shaping: verl's own entropy from that pass, which
    bypass mode skips, on any engine)."""
    from vgpo_verl.plugin.method_table import ENGINE_ESTIMATORS, ESTIMATOR_NAMES, method_of, validate_knobs

    for name in ESTIMATOR_NAMES:
        if not requires_scoring_pass(name):
            register_scoring_estimator(name, lambda algorithm, name=name: validate_knobs(method_of(name), algorithm),
                                       needs_engine=name in ENGINE_ESTIMATORS)


_register_comparison_methods()




def trainer_kind(config: Any, entry: str | None) -> str | None:
    """'v1', 'legacy', 'fully_async', 'one_step_off', or None for an entry point we do not know."""
    if entry not in ENTRY_POINTS:
        return None
    kind = ENTRY_POINTS[entry]
    if kind is not None:
        return kind
    return "v1" if bool(config_value(config, "trainer.use_v1", True)) else "legacy"


def worker_environment(config: Any, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment verl's workers will see: the driver's, then the Ray runtime_env's env_vars."""
    env = dict(os.environ if environ is None else environ)
    extra = config_value(config, "ray_kwargs.ray_init.runtime_env.env_vars", {}) or {}
    env.update({str(k): str(v) for k, v in dict(extra).items()})
    return env


def resolved_engine_key(env: dict[str, str]) -> tuple[str, str]:
    """(device, vendor) that verl's EngineRegistry.get_engine_cls will look up first in the workers."""
    from verl.plugin.platform import get_platform

    platform = get_platform()
    device = env.get("VERL_ENGINE_DEVICE") or platform.device_name
    vendor = env.get("VERL_ENGINE_VENDOR") or platform.vendor_name
    return str(device), str(vendor)


def problems(config: Any, entry: str | None, environ: dict[str, str] | None = None,
             engine_key: tuple[str, str] | None = None) -> list[str]:
    """Everything in `config` the scoring engine cannot serve, one line each; [] when fine or not ours.

    Args:
        config: the composed Hydra config of a PPO entry point.
        entry: module name of the entry point's `main` (see ENTRY_POINTS), None if unknown.
        environ: the driver's environment (default os.environ).
        engine_key: (device, vendor) the workers resolve; default from verl's platform and the env.
    """
    estimator = str(config_value(config, "algorithm.adv_estimator", ""))
    env = worker_environment(config, environ)
    every_estimator = _stop_path_problems(config, env)  # our stop path serves every estimator
    if str(config_value(config, "actor_rollout_ref.actor.strategy", "")) == "veomni":
        every_estimator += veomni_checkpoint_problems(config)
    if not requires_scoring_pass(estimator):
        return every_estimator
    found = list(every_estimator)
    est = f"algorithm.adv_estimator={estimator}"

    validate = _SCORING_ESTIMATORS[estimator]
    if validate is not None:
        try:
            validate(config_value(config, "algorithm"))
        except ValueError as error:  # one problem per line: a config block lists all of its own at once
            found.extend(str(error).splitlines())

    if _NEEDS_ENGINE.get(estimator, True):
        found.extend(_engine_problems(config, est, env, engine_key))

    kind = trainer_kind(config, entry)
    if kind in ("fully_async", "one_step_off"):
        found.append(f"{entry}: {est} {EXPERIMENTAL_NOT_RUN}")

    if bool(config_value(config, "algorithm.rollout_correction.bypass_mode", False)):
        default_note = (
            f" (the experimental {kind} trainer's config sets it to true by default)"
            if kind in ("fully_async", "one_step_off") else ""
        )
        found.append(
            f"algorithm.rollout_correction.bypass_mode=true{default_note}: bypass mode skips the actor's "
            f"old-log-prob forward pass, which {est} takes its inputs from; set "
            "algorithm.rollout_correction.bypass_mode=false."
        )

    if not plugin_reaches_workers(config, env):
        plugins = env.get("VERL_USE_EXTERNAL_PLUGINS", "auto").strip().lower()
        found.append(
            f"VERL_USE_EXTERNAL_PLUGINS={plugins}: verl will not load vgpo-verl's entry point in the workers, "
            f"so {est} would have no scoring engine there; set actor_rollout_ref.model.external_lib=vgpo_verl "
            f"(or VERL_USE_EXTERNAL_MODULES=vgpo_verl.plugin, or add {PLUGIN_ENTRY_POINT!r} to "
            "VERL_USE_EXTERNAL_PLUGINS)."
        )
    found.extend(model_problems(config))
    return found


def _stop_path_problems(config: Any, env: dict[str, str]) -> list[str]:
    """A stop file (vgpo_verl.plugin.preemption) with verl's async save: the stop returns after a save
    whose latest_checkpointed_iteration.txt verl never writes (async), so the next start would begin at
    step 0, and the Slurm script would requeue the job into a run from scratch."""
    from vgpo_verl.plugin.preemption import STOP_FILE_VAR

    stop_file = env.get(STOP_FILE_VAR, "").strip()
    if stop_file and bool(config_value(config, "actor_rollout_ref.actor.checkpoint.async_save", False)):
        return [f"actor_rollout_ref.actor.checkpoint.async_save=true with {STOP_FILE_VAR}={stop_file}: verl "
                "records no async save as the checkpoint to resume from (latest_checkpointed_iteration.txt), so "
                "a run stopped at a step boundary would restart from step 0 (and a Slurm requeue from scratch); "
                f"set actor_rollout_ref.actor.checkpoint.async_save=false, or unset {STOP_FILE_VAR}."]
    return []


def _engine_problems(config: Any, est: str, env: dict[str, str], engine_key: tuple[str, str] | None) -> list[str]:
    """The FSDP-strategy and engine-key checks, for estimators that read the scoring engine's outputs."""
    found = []
    strategy = str(config_value(config, "actor_rollout_ref.actor.strategy", ""))
    if strategy not in SCORING_STRATEGIES:
        found.append(
            f"actor_rollout_ref.actor.strategy={strategy}: {est} scores in verl's FSDP and VeOmni actor engines "
            "only; use model_engine=dp (verl's default) with actor_rollout_ref.actor.strategy=fsdp2 (or fsdp), "
            f"or model_engine=veomni{ENGINE_NOTES.get(strategy, '')}."
        )
    if strategy == "veomni":
        found.extend(_veomni_problems(config, est))
    device, vendor = engine_key if engine_key is not None else resolved_engine_key(env)
    if (device, vendor) not in SCORING_ENGINE_KEYS:
        where = f"trainer.device={config_value(config, 'trainer.device', '?')}, engine key ({device!r}, {vendor!r})"
        hint = (
            "set VERL_ENGINE_DEVICE=cuda VERL_ENGINE_VENDOR=nvidia (vgpo_verl.cpu.enable() does this for the demo)"
            if device == "cpu"
            else "run on NVIDIA GPUs (AMD ROCm and Ascend NPU keep verl's stock engine, which computes no scores)"
        )
        found.append(
            f"{where}: {est} needs the scoring engine, registered for "
            f"{', '.join(map(str, SCORING_ENGINE_KEYS))} only; {hint}."
        )
    return found


def _veomni_problems(config: Any, est: str) -> list[str]:
    """What the VeOmni scoring engine (vgpo_verl.plugin.engine_veomni) has not run with, or cannot."""
    found = []
    sp = config_value(config, "actor_rollout_ref.actor.veomni.ulysses_parallel_size", 1)
    if int(sp or 1) > 1:
        found.append(
            f"actor_rollout_ref.actor.veomni.ulysses_parallel_size={sp}: {est} has not run under VeOmni's sequence "
            "parallelism (its attention is a flash-attention kernel, untested with the scores); set it to 1, or "
            "use FSDP's: model_engine=dp actor_rollout_ref.actor.strategy=fsdp2 "
            "actor_rollout_ref.actor.fsdp_config.ulysses_sequence_parallel_size=N (not on a *_veomni recipe, "
            "which selects the VeOmni engine itself)."
        )
    model_type = actor_model_type(config)
    if model_type in ("qwen3_5", "qwen3_5_moe") and not bool(
            config_value(config, "actor_rollout_ref.model.use_remove_padding", True)):
        found.append(
            f"actor_rollout_ref.model.use_remove_padding=false with model_type={model_type} on VeOmni: VeOmni's "
            "Qwen3.5 decoder layers assert cu_seq_lens_q, which verl passes only for packed sequences; set "
            "actor_rollout_ref.model.use_remove_padding=true."
        )
    return found


def plugin_reaches_workers(config: Any, env: dict[str, str]) -> bool:
    """Whether `import verl` in a worker with environment `env` loads vgpo_verl.plugin, by any of verl's
    three ways: the `verl.plugins` entry point (VERL_USE_EXTERNAL_PLUGINS: auto, or a list naming ours),
    the modules verl imports first (VERL_USE_EXTERNAL_MODULES, split on commas as verl splits it), or
    `actor_rollout_ref.model.external_lib`."""
    plugins = env.get("VERL_USE_EXTERNAL_PLUGINS", "auto").strip().lower()
    if plugins == "auto" or PLUGIN_ENTRY_POINT in {p.strip() for p in plugins.split(",")}:
        return True
    modules = env.get("VERL_USE_EXTERNAL_MODULES", "")
    return (_external_lib_loads_plugin(modules.split(",") if modules else [])
            or _external_lib_loads_plugin(config_value(config, "actor_rollout_ref.model.external_lib", None)))


def _external_lib_loads_plugin(external_lib: Any) -> bool:
    """Whether verl's `import_external_libs(actor_rollout_ref.model.external_lib)` imports vgpo_verl
    (the module itself or one of its submodules; a str or a list, as verl accepts)."""
    names = [external_lib] if isinstance(external_lib, str) else list(external_lib or [])
    return any(str(name).strip() == "vgpo_verl" or str(name).strip().startswith("vgpo_verl.") for name in names)


def warnings_for(config: Any, entry: str | None) -> list[str]:
    """Start-up warnings for any estimator (nothing refused)."""
    out = []
    kind = trainer_kind(config, entry)
    if kind in IGNORES_FILTER_GROUPS and bool(config_value(config, "algorithm.filter_groups.enable", False)):
        switch = "trainer.use_v1=false" if kind == "legacy" else f"the experimental {kind} trainer"
        out.append(
            f"algorithm.filter_groups.enable=true is IGNORED with {switch}: verl 0.9's DAPO dynamic sampling "
            "lives in the v1 trainer's replay buffer only, so every group is trained on, including groups "
            "whose rewards are all equal. Use verl.trainer.main_ppo with trainer.use_v1=true (the default) "
            "to filter, or set algorithm.filter_groups.enable=false to silence this."
        )
    keep = config_value(config, "trainer.max_actor_ckpt_to_keep", None)
    if keep == 1 and int(config_value(config, "trainer.save_freq", -1) or -1) > 0:
        out.append(
            "trainer.max_actor_ckpt_to_keep=1: verl deletes the previous checkpoint as soon as the next save's "
            "actor files are written, before that save is whole; a run killed in between (preemption, a time "
            "limit, a crash) has no checkpoint left to resume from. Keep 2 (trainer.max_actor_ckpt_to_keep=2)."
        )
    estimator = str(config_value(config, "algorithm.adv_estimator", ""))
    mode = str(config_value(config, "trainer.v1.trainer_mode", "sync"))
    if requires_scoring_pass(estimator) and kind == "v1" and mode not in KNOWN_V1_MODES:
        out.append(
            f"trainer.v1.trainer_mode={mode}: a trainer mode vgpo-verl does not know; {estimator} works if its "
            "class keeps PPOTrainer's _compute_old_log_prob and _compute_advantage (which vgpo-verl wraps)."
        )
    return out


def check(config: Any, entry: str | None, environ: dict[str, str] | None = None,
          engine_key: tuple[str, str] | None = None) -> None:
    """Raise UnsupportedSetupError listing every problem; log the warnings (each once per process)."""
    for message in warnings_for(config, entry):
        if message not in _warned:
            _warned.add(message)
            logger.warning("vgpo-verl: %s", message)
    found = problems(config, entry, environ, engine_key)
    if found:
        estimator = config_value(config, "algorithm.adv_estimator")
        raise UnsupportedSetupError(
            f"vgpo-verl refuses this run before starting Ray (algorithm.adv_estimator={estimator}):\n"
            + "\n".join(f"  - {line}" for line in found)
        )


def _caller_entry(frame) -> str | None:
    """Module name of the function that called auto_set_device (its __spec__ name when run as __main__)."""
    if frame is None:
        return None
    module_globals = frame.f_globals
    name = module_globals.get("__name__")
    if name != "__main__":
        return name
    spec = module_globals.get("__spec__")
    if spec is not None:
        return spec.name
    path = os.path.realpath(module_globals.get("__file__") or "")  # `python path/to/main_ppo.py`
    for module in ENTRY_POINTS:
        if path.endswith(os.sep + module.replace(".", os.sep) + ".py"):
            return module
    return None


def _wrap_auto_set_device(original):
    import functools

    @functools.wraps(original)
    def auto_set_device(config, *args, **kwargs):
        result = original(config, *args, **kwargs)
        check(config, _caller_entry(sys._getframe(1)))
        return result

    auto_set_device._vgpo_wrapped = True
    return auto_set_device


def install() -> None:
    """Wrap verl.utils.device.auto_set_device (run when verl imports that module). Idempotent."""
    from verl.utils import device

    if not getattr(device.auto_set_device, "_vgpo_wrapped", False):
        device.auto_set_device = _wrap_auto_set_device(device.auto_set_device)
