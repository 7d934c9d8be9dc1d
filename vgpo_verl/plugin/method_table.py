"""Our advantage estimators and what each one needs from verl's old-log-prob pass, in one table.

The trainer wiring reads it to flag the pass (`pass_flags`), to fetch the estimator's inputs from
the TransferQueue (v1) or the batch (legacy) and to hand them over as keyword arguments; the demo
reads the metric prefixes. Plain Python: the driver imports it without verl's engine.

| estimator         | flagged pass adds (engine)                           | verl's own fields reused      |
|-------------------|------------------------------------------------------|-------------------------------|
| `vgpo`            | visual scores (B, R), a has-visual flag (B, 1)       | -                             |
| `entropy_shaping` | nothing                                              | `entropy` (calculate_entropy) |
| `vppo`            | log-probs under a perturbed image (B, R), 1 forward  | `old_log_probs`               |

(B, R): nested, response tokens only, aligned with verl's `old_log_probs` (vgpo_verl/plugin/engine.py);
(B, 1): one value per sample. No prompt token of ours rides in the TransferQueue.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable

# The estimators of the table below, importable without torch-side modules (vgpo_verl.plugin.preflight
# registers them at `import verl`, where nothing heavy may load).
ESTIMATOR_NAMES = ("vgpo", "entropy_shaping", "vppo")
# Those whose inputs only vgpo-verl's FSDP engine writes (`Method.needs_engine_pass`): the start-up
# checks refuse other strategies and vendors for these only (entropy_shaping reads verl's own entropy).
ENGINE_ESTIMATORS = ("vgpo", "vppo")


@dataclass(frozen=True)
class Method:
    """One estimator of ours, as the glue sees it."""

    estimator: str  # algorithm.adv_estimator, and the registry name in verl
    config_key: str  # its knobs live under algorithm.<config_key>
    metric_prefix: str
    # model-output keys the engine adds in the flagged pass -> the estimator keyword receiving them;
    # nested (B, R_i), entry t for response token y_t, like verl's old_log_probs (padded (B, T) on arrival)
    engine_outputs: dict[str, str] = field(default_factory=dict)
    # engine outputs that are per sample, (B, 1) instead of (B, R_i): the keyword gets (B,) bool
    per_sample: frozenset[str] = frozenset()
    # response-aligned fields verl itself writes in the old-log-prob pass -> estimator keyword;
    # the name in the v1 TransferQueue and the name in the legacy trainer's old_log_prob output
    verl_fields: dict[str, str] = field(default_factory=dict)
    legacy_fields: dict[str, str] = field(default_factory=dict)
    # non-tensor flags for the flagged pass, from (verl config, global step); None: no flag
    pass_flags: Callable[[Any, int], dict[str, Any]] | None = None

    @property
    def needs_engine_pass(self) -> bool:
        return bool(self.engine_outputs)


def _vgpo_flags(config, step: int) -> dict[str, Any]:
    from vgpo_verl.plugin.estimator import vgpo_config_from
    from vgpo_verl.methods.scoring import LAYER_KEY, SCORE_FLAG

    return {SCORE_FLAG: True, LAYER_KEY: vgpo_config_from(config.algorithm).layer}


def _vppo_flags(config, step: int) -> dict[str, Any]:
    from vgpo_verl.methods.perturb import MEAN_KEY, PERTURB_FLAG, PROB_KEY, SEED_KEY, STD_KEY, step_seed
    from vgpo_verl.methods.vppo import VPPOConfig

    vppo = VPPOConfig.from_mapping(config.algorithm.get("vppo", None))
    flags = {PERTURB_FLAG: True, PROB_KEY: vppo.black_prob, SEED_KEY: step_seed(vppo.seed, step)}
    if vppo.image_mean is not None:  # else the engine reads its image processor's
        flags.update({MEAN_KEY: tuple(vppo.image_mean), STD_KEY: tuple(vppo.image_std)})  # a list would be per-sample data
    return flags


@functools.lru_cache(maxsize=None)
def methods() -> dict[str, Method]:
    """estimator name -> Method (built on first use: it imports the key names of the engine's outputs)."""
    from vgpo_verl.methods.perturb import AUG_LOG_PROBS_KEY
    from vgpo_verl.methods.scoring import HAS_VISUAL_KEY, SCORE_KEY

    return {
        m.estimator: m
        for m in (
            Method("vgpo", "vgpo", "vgpo/", engine_outputs={SCORE_KEY: "visual_similarity", HAS_VISUAL_KEY: "has_visual"},
                   per_sample=frozenset({HAS_VISUAL_KEY}), pass_flags=_vgpo_flags),
            Method("entropy_shaping", "entropy_shaping", "entropy/",
                   verl_fields={"entropy": "entropy"}, legacy_fields={"entropys": "entropy"}),
            Method("vppo", "vppo", "vppo/", engine_outputs={AUG_LOG_PROBS_KEY: "aug_log_probs"},
                   verl_fields={"old_log_probs": "old_log_probs"}, legacy_fields={"old_log_probs": "old_log_probs"},
                   pass_flags=_vppo_flags),
        )
    }



def validate_knobs(method: Method, algorithm_config: Any) -> None:
    """Build the method's config dataclass from `algorithm.<config_key>`; ValueError naming the key."""
    from vgpo_verl.methods.knobs import config_class as config_class_of

    config_class = config_class_of(method.config_key)
    block = None if algorithm_config is None else algorithm_config.get(method.config_key, None)
    try:
        config_class.from_mapping(block)
    except ValueError as error:  # name the key as the user types it
        raise ValueError(str(error).replace(f"{config_class.__name__}.", f"algorithm.{method.config_key}.")) from error


def method_of(estimator: Any) -> Method | None:
    """Our Method for an `algorithm.adv_estimator` value; None for verl's own estimators."""
    return methods().get(str(estimator)) if str(estimator) in ESTIMATOR_NAMES else None
