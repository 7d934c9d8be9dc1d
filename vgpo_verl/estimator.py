"""The `vgpo` advantage estimator for verl: GRPO outcome advantage times alpha (B,) times psi (B, T).

verl calls registered estimators with only (token_level_rewards, response_mask, index, config), so
the actor's similarity scores arrive through `visual_scores(...)`, a context the trainer wiring
opens around verl's own compute_advantage. Direct callers may pass them as keyword arguments.

Agent loops that return several outputs per session (verl v1 keys `{uid}_{session}_{i}`; the
wiring opens `agent_sessions(...)` around verl's compute_advantage_for_multi_trajectories) are
weighted per session, the way verl treats them for GRPO:
- outcome advantage A: GRPO over the group's sessions using each session's final output only,
  broadcast to every output of the session (verl's own rule for GRPO, copied in behaviour);
- alpha: one per session, phi accumulated over all its outputs' response tokens, each session
  counted once in its group's min-max and mean, broadcast to its outputs;
- psi: per output, over that output's response tokens (each output is its own sequence, scored
  against its own visual prototype);
- rho: its min-max scope is the uid group (all outputs of its sessions), the session
  (rho_norm=trajectory) or the batch.
With every switch off this is exactly verl's multi-output GRPO (tested through verl's function).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import numpy as np
import torch

from vgpo_verl.algorithm import VGPOConfig, compute_vgpo_weights_detailed, vgpo_metrics

ESTIMATOR_NAME = "vgpo"

_state = threading.local()  # .scores: (similarity, has_visual) or None; .metrics: dict


@contextlib.contextmanager
def visual_scores(similarity: torch.Tensor, has_visual: torch.Tensor, is_padding: torch.Tensor | None = None):
    """Hand the actor's scores to the `vgpo` estimator for the duration of the block.

    Args:
        similarity: (B, T) raw cosine of each response token with its prompt's visual prototype,
            rows in the order of the DataProto given to verl's compute_advantage.
        has_visual: (B,) bool, False for samples whose prompt has no visual token.
        is_padding: (B,) bool, True for verl's balance-batch padding rows (no sample: kept out of
            every metric); None = no padding rows.
    """
    previous = getattr(_state, "scores", None), getattr(_state, "is_padding", None)
    _state.scores, _state.is_padding = (similarity, has_visual), is_padding
    try:
        yield
    finally:
        _state.scores, _state.is_padding = previous


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


def pop_metrics() -> dict[str, float]:
    """The `vgpo/...` metrics of the last estimator call in this thread (then forgotten)."""
    metrics = getattr(_state, "metrics", None) or {}
    _state.metrics = {}
    return metrics


def vgpo_config_from(algorithm_config: Any) -> VGPOConfig:
    """VGPOConfig from verl's `algorithm` config (its optional `vgpo` block); None -> defaults."""
    block = None if algorithm_config is None else algorithm_config.get("vgpo", None)
    return VGPOConfig.from_mapping(block)


# How to get the scores back; shared with the trainer wiring's error when they are absent from the batch.
MISSING_SCORES_FIX = (
    "They are computed in the old-log-prob forward pass, so that pass must run: it is skipped when "
    "algorithm.rollout_correction.bypass_mode=true (set it to false). Also check that vgpo-verl is "
    "installed in every node's environment (`pip install vgpo-verl`; its verl.plugins entry point "
    "registers the scoring engine), or pass actor_rollout_ref.model.external_lib=vgpo_verl."
)
_MISSING_SCORES = "adv_estimator=vgpo needs the actor's visual similarity scores, and none reached the estimator. " + MISSING_SCORES_FIX


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
        visual_similarity: (B, T) raw cosine scores; None reads them from `visual_scores(...)`.
        has_visual: (B,) bool; None with explicit `visual_similarity` means all True.

    Returns:
        advantages, returns: (B, T) each (identical, as in GRPO), 0 at padding.
    """
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    if index is None:
        raise ValueError("adv_estimator=vgpo needs the per-row prompt ids (non_tensor_batch['uid']); got none")
    vgpo = vgpo_config_from(config)
    if norm_adv_by_std_in_grpo is None:
        norm_adv_by_std_in_grpo = True if config is None else bool(config.get("norm_adv_by_std_in_grpo", True))
    if visual_similarity is None:
        pending = getattr(_state, "scores", None)
        if pending is None:
            raise RuntimeError(_MISSING_SCORES)
        visual_similarity, has_visual = pending
    if visual_similarity.shape != response_mask.shape:
        raise ValueError(
            f"visual similarity {tuple(visual_similarity.shape)} does not match response_mask "
            f"{tuple(response_mask.shape)}: the scores belong to another batch or were sliced wrongly"
        )

    sessions = getattr(_state, "sessions", None)
    if sessions is None:
        session = None
        advantages, _ = compute_grpo_outcome_advantage(
            token_level_rewards=token_level_rewards,
            response_mask=response_mask,
            index=index,
            epsilon=epsilon,
            norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo,
        )
    else:
        session, is_final = (torch.as_tensor(x, device=response_mask.device) for x in sessions)
        advantages = session_grpo_advantage(token_level_rewards, response_mask, index, session, is_final.bool(),
                                            epsilon, norm_adv_by_std_in_grpo)
    weights = compute_vgpo_weights_detailed(
        visual_similarity.to(response_mask.device), response_mask, index, vgpo,
        None if has_visual is None else torch.as_tensor(has_visual, device=response_mask.device),
        session=session,
    )
    is_padding = getattr(_state, "is_padding", None)
    counted = None if is_padding is None else ~torch.as_tensor(is_padding, device=response_mask.device).bool()
    _state.metrics = vgpo_metrics(weights, visual_similarity, has_visual, counted=counted)
    if vgpo.intra or vgpo.inter:  # all switches off: exactly GRPO, no rounding from a multiply by 1
        advantages = advantages * weights.alpha[:, None].to(advantages.dtype) * weights.psi.to(advantages.dtype)
    return advantages, advantages


def register() -> None:
    """Register `vgpo` in verl's estimator registry (run when core_algos is imported)."""
    from verl.trainer.ppo.core_algos import register_adv_est

    register_adv_est(ESTIMATOR_NAME)(compute_vgpo_advantage)
