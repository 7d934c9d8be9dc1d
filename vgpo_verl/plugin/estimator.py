"""Our advantage estimators for verl, one glue layer on verl's `register_adv_est` hook.

- `vgpo`: GRPO outcome advantage times alpha (B,) times psi (B, T) (vgpo_verl.methods.vgpo);
- `entropy_shaping`: GRPO advantage plus the clipped entropy bonus (vgpo_verl.methods.entropy_shaping);
- `vppo`: GRPO advantage times VPPO's trajectory factor, masked to its top tokens (vgpo_verl.methods.vppo).

verl calls registered estimators with only (token_level_rewards, response_mask, index, config), so
what each one needs from the old-log-prob pass (vgpo_verl.plugin.method_table) arrives through
`estimator_inputs(...)`, a context the trainer wiring opens around verl's own compute_advantage.
Direct callers may pass the same tensors as keyword arguments.

Agent loops that return several outputs per session (verl v1 keys `{uid}_{session}_{i}`; the
wiring opens `agent_sessions(...)` around verl's compute_advantage_for_multi_trajectories) are
weighted per session, the way verl treats them for GRPO. For all three estimators the outcome
advantage A is GRPO over the group's sessions using each session's final output only, broadcast to
every output of the session (verl's own rule for GRPO, copied in behaviour), so with their own
switches off all three equal verl's multi-output GRPO (tested through verl's function). The
methods' own parts:
- vgpo: alpha one per session, phi accumulated over all its outputs' response tokens, each session
  counted once in its group's min-max and mean, broadcast to its outputs; psi per output, over that
  output's response tokens (each output is its own sequence, scored against its own visual
  prototype); rho's min-max scope is the uid group (all outputs of its sessions), the session
  (rho_norm=trajectory) or the batch;
- entropy_shaping: per token, as without sessions (each token's bonus is bounded by its own |A|,
  which is its session's);
- vppo: the token filter per output (the top share of that output's tokens); the trajectory factor
  one per session, from the mean score over all its outputs' tokens, each session counted once in
  the batch's min / max / mean (scaling_scope=fork cuts chunks of sessions, in order of first output).

Each estimator adds the seconds of its own part (everything after the outcome advantage) to the
step's `timing_s/vgpo_weights`, one key for all three (vgpo_verl.plugin.timing).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import numpy as np
import torch

from vgpo_verl.plugin import timing
from vgpo_verl.methods.vgpo import VGPOConfig, compute_vgpo_weights_detailed, vgpo_metrics
from vgpo_verl.methods.entropy_shaping import EntropyShapingConfig, entropy_metrics, shape_advantages
from vgpo_verl.methods.vppo import VPPOConfig, apply_vppo, compute_vppo_weights, vppo_metrics

ESTIMATOR_NAME = "vgpo"

_state = threading.local()  # .inputs: dict of keyword -> tensor, or None; .metrics: dict


@contextlib.contextmanager
def estimator_inputs(**inputs: torch.Tensor):
    """Hand the old-log-prob pass's tensors to our estimators for the duration of the block.

    Keywords (rows in the order of the DataProto given to verl's compute_advantage, T as its
    response_mask): `visual_similarity` (B, T) and `has_visual` (B,) bool for vgpo; `entropy`
    (B, T) for entropy_shaping; `aug_log_probs` and `old_log_probs` (B, T) for vppo; for all,
    `is_padding` (B,) bool, True for verl's balance-batch padding rows (no sample: kept out of every
    metric and batch statistic; absent = no padding rows).
    """
    previous = getattr(_state, "inputs", None)
    _state.inputs = inputs
    try:
        yield
    finally:
        _state.inputs = previous


def _pending(estimator: str, names: tuple[str, ...], given: dict[str, Any]) -> dict[str, Any]:
    """The tensors `names`: those given explicitly, else those of the open estimator_inputs block."""
    if all(given[n] is not None for n in names):
        return given
    pending = getattr(_state, "inputs", None) or {}
    missing = [n for n in names if given[n] is None and n not in pending]
    if missing:
        raise RuntimeError(
            f"adv_estimator={estimator} needs {missing} from the actor's old-log-prob pass, and none reached "
            "the estimator. " + MISSING_SCORES_FIX
        )
    return {n: given[n] if given[n] is not None else pending[n] for n in names}


@contextlib.contextmanager
def agent_sessions(session: torch.Tensor, is_final: torch.Tensor):
    """Tell the `vgpo` estimator which rows are outputs of one agent session (see compute_vgpo_advantage).

    Args:
        session: (B,) long codes 0..S-1, one per session (verl's keys `{uid}_{session}_{i}`).
        is_final: (B,) bool, the session's last output (highest i); exactly one per session.
    """
    previous = getattr(_state, "sessions", None)
    _state.sessions = (session, is_final)
    try:
        yield
    finally:
        _state.sessions = previous


def session_grpo_advantage(token_level_rewards, response_mask, index, session, is_final, epsilon,
                           norm_adv_by_std_in_grpo) -> torch.Tensor:
    """GRPO outcome advantage (B, T) of multi-output sessions, as verl 0.9's v1 trainer computes it
    for GRPO (verl/trainer/ppo/v1/utils.py, compute_advantage_for_multi_trajectories): groups of
    the sessions' final outputs only, each session's value broadcast to all its outputs' tokens."""
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    final = is_final.nonzero().flatten()
    final_adv, _ = compute_grpo_outcome_advantage(
        token_level_rewards=token_level_rewards[final], response_mask=response_mask[final],
        index=np.asarray(index, dtype=object)[final.cpu().numpy()], epsilon=epsilon,
        norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo,
    )
    # verl reads each final output's value at its first response token (0 if it has none).
    first = response_mask[final].argmax(dim=1)
    per_session = final_adv.new_zeros(int(session.max()) + 1).scatter(
        0, session[final].to(final_adv.device), final_adv[torch.arange(len(final)), first])
    return per_session[session.to(final_adv.device)].unsqueeze(-1) * response_mask


def _counted_rows(device) -> torch.Tensor | None:
    """(B,) bool: rows that are real samples (not balance-batch padding); None when all are."""
    is_padding = (getattr(_state, "inputs", None) or {}).get("is_padding", None)
    return None if is_padding is None else ~torch.as_tensor(is_padding, device=device).bool()


def pop_metrics() -> dict[str, float]:
    """The `vgpo/...` metrics of the last estimator call in this thread (then forgotten)."""
    metrics = getattr(_state, "metrics", None) or {}
    _state.metrics = {}
    return metrics


def vgpo_config_from(algorithm_config: Any) -> VGPOConfig:
    """VGPOConfig from verl's `algorithm` config (its optional `vgpo` block); None -> defaults."""
    block = None if algorithm_config is None else algorithm_config.get("vgpo", None)
    return VGPOConfig.from_mapping(block)


# How to get the pass's outputs back; shared with the trainer wiring's error when they are absent from the batch.
MISSING_SCORES_FIX = (
    "They come from the old-log-prob forward pass, so that pass must run: it is skipped when "
    "algorithm.rollout_correction.bypass_mode=true (set it to false). Also check that vgpo-verl is "
    "installed in every node's environment (`pip install vgpo-verl`; its verl.plugins entry point "
    "registers the scoring engine), or pass actor_rollout_ref.model.external_lib=vgpo_verl."
)


def compute_vgpo_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any = None,
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool | None = None,
    config: Any = None,
    visual_similarity: torch.Tensor | None = None,
    has_visual: torch.Tensor | None = None,
    **unused: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """VGPO advantage A_i * alpha_i * psi_{i,t} (spec section 5), verl's estimator signature.

    Args:
        token_level_rewards: (B, T) rewards; their row sum is the outcome reward.
        response_mask: (B, T) valid response tokens.
        index: (B,) prompt ids (verl's `uid`), the GRPO groups.
        epsilon: GRPO's std epsilon.
        norm_adv_by_std_in_grpo: None reads `algorithm.norm_adv_by_std_in_grpo` from `config` (verl
            does not pass it to registered estimators); default True.
        config: verl's `algorithm` config; knobs under `algorithm.vgpo.*`.
        visual_similarity: (B, T) raw cosine scores; None reads them from `estimator_inputs(...)`.
        has_visual: (B,) bool; None with explicit `visual_similarity` means all True.

    Returns:
        advantages, returns: (B, T) each (identical, as in GRPO), 0 at padding.
    """
    if index is None:
        raise ValueError("adv_estimator=vgpo needs the per-row prompt ids (non_tensor_batch['uid']); got none")
    vgpo = vgpo_config_from(config)
    if visual_similarity is None:
        pending = _pending("vgpo", ("visual_similarity", "has_visual"), {"visual_similarity": None, "has_visual": None})
        visual_similarity, has_visual = pending["visual_similarity"], pending["has_visual"]
    if visual_similarity.shape != response_mask.shape:
        raise ValueError(
            f"visual similarity {tuple(visual_similarity.shape)} does not match response_mask "
            f"{tuple(response_mask.shape)}: the scores belong to another batch or were sliced wrongly"
        )

    advantages, session = _outcome_advantage("vgpo", token_level_rewards, response_mask, index, epsilon,
                                             norm_adv_by_std_in_grpo, config)
    with timing.on_driver(timing.WEIGHTS):
        weights = compute_vgpo_weights_detailed(
            visual_similarity.to(response_mask.device), response_mask, index, vgpo,
            None if has_visual is None else torch.as_tensor(has_visual, device=response_mask.device),
            session=session,
        )
        _state.metrics = vgpo_metrics(weights, visual_similarity, has_visual,
                                      counted=_counted_rows(response_mask.device))
        if vgpo.intra or vgpo.inter:  # all switches off: exactly GRPO, no rounding from a multiply by 1
            advantages = advantages * weights.alpha[:, None].to(advantages.dtype) * weights.psi.to(advantages.dtype)
    return advantages, advantages


def _outcome_advantage(estimator: str, token_level_rewards, response_mask, index, epsilon, norm_adv_by_std_in_grpo,
                       config) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The GRPO outcome advantage (B, T) all three of our estimators reshape, as verl computes it for
    GRPO: per row, or per agent session inside an `agent_sessions(...)` block; and the (B,) session
    codes of that block (None outside one)."""
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    if index is None:
        raise ValueError(f"adv_estimator={estimator} needs the per-row prompt ids (non_tensor_batch['uid']); got none")
    if norm_adv_by_std_in_grpo is None:
        norm_adv_by_std_in_grpo = True if config is None else bool(config.get("norm_adv_by_std_in_grpo", True))
    sessions = getattr(_state, "sessions", None)
    if sessions is not None:
        session, is_final = (torch.as_tensor(x, device=response_mask.device) for x in sessions)
        return session_grpo_advantage(token_level_rewards, response_mask, index, session, is_final.bool(), epsilon,
                                      norm_adv_by_std_in_grpo), session
    advantages, _ = compute_grpo_outcome_advantage(
        token_level_rewards=token_level_rewards, response_mask=response_mask, index=index, epsilon=epsilon,
        norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo,
    )
    return advantages, None


def _check_shape(estimator: str, name: str, value: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    if tuple(value.shape) != tuple(response_mask.shape):
        raise ValueError(
            f"adv_estimator={estimator}: {name} {tuple(value.shape)} does not match response_mask "
            f"{tuple(response_mask.shape)}: it belongs to another batch or was sliced wrongly"
        )
    return value.to(response_mask.device)


def compute_entropy_shaped_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any = None,
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool | None = None,
    config: Any = None,
    entropy: torch.Tensor | None = None,
    **unused: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO advantage + min(alpha * H, |A| / kappa) (vgpo_verl.methods.entropy_shaping), verl's estimator signature.

    Args: as `compute_vgpo_advantage`; knobs under `algorithm.entropy_shaping.*`; `entropy` (B, T) is
    the old policy's token entropy, None reads it from `estimator_inputs(...)`.
    Returns: advantages, returns: (B, T) each (identical, as in GRPO), 0 at padding.
    """
    shaping_config = EntropyShapingConfig.from_mapping(None if config is None else config.get("entropy_shaping", None))
    entropy = _pending("entropy_shaping", ("entropy",), {"entropy": entropy})["entropy"]
    entropy = _check_shape("entropy_shaping", "entropy", entropy, response_mask)
    advantages, _ = _outcome_advantage("entropy_shaping", token_level_rewards, response_mask, index, epsilon,
                                       norm_adv_by_std_in_grpo, config)
    with timing.on_driver(timing.WEIGHTS):
        shaped = shape_advantages(advantages, entropy, response_mask, shaping_config)
        counted = _counted_rows(response_mask.device)
        metric_mask = response_mask if counted is None else response_mask * counted[:, None]
        _state.metrics = entropy_metrics(shaped, advantages, entropy, metric_mask)
    return shaped.advantages, shaped.advantages


def compute_vppo_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any = None,
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool | None = None,
    config: Any = None,
    aug_log_probs: torch.Tensor | None = None,
    old_log_probs: torch.Tensor | None = None,
    **unused: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO advantage * VPPO's trajectory factor, kept on its top tokens only (vgpo_verl.methods.vppo).

    Args: as `compute_vgpo_advantage`; knobs under `algorithm.vppo.*`; `aug_log_probs` / `old_log_probs`
    (B, T) are the old policy's log-probs with the perturbed / the real image, None reads them from
    `estimator_inputs(...)`.
    Returns: advantages, returns: (B, T) each (identical, as in GRPO), 0 at padding and at filtered tokens.
    """
    vppo_config = VPPOConfig.from_mapping(None if config is None else config.get("vppo", None))
    inputs = _pending("vppo", ("aug_log_probs", "old_log_probs"),
                      {"aug_log_probs": aug_log_probs, "old_log_probs": old_log_probs})
    aug = _check_shape("vppo", "aug_log_probs", inputs["aug_log_probs"], response_mask)
    old = _check_shape("vppo", "old_log_probs", inputs["old_log_probs"], response_mask)
    advantages, session = _outcome_advantage("vppo", token_level_rewards, response_mask, index, epsilon,
                                             norm_adv_by_std_in_grpo, config)
    with timing.on_driver(timing.WEIGHTS):
        counted = _counted_rows(response_mask.device)
        weights = compute_vppo_weights(aug, old, response_mask, vppo_config, counted=counted, session=session)
        _state.metrics = vppo_metrics(weights, response_mask if counted is None else response_mask * counted[:, None])
        advantages = apply_vppo(advantages, weights, vppo_config)
    return advantages, advantages


ESTIMATORS = {
    "vgpo": compute_vgpo_advantage,
    "entropy_shaping": compute_entropy_shaped_advantage,
    "vppo": compute_vppo_advantage,
}


def register() -> None:
    """Register our estimators in verl's estimator registry (run when core_algos is imported)."""
    from verl.trainer.ppo.core_algos import register_adv_est

    for name, fn in ESTIMATORS.items():
        register_adv_est(name)(fn)
