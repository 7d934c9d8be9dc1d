"""VPPO (Visually-Perceptive Policy Optimization, "Spotlight on Token Perception for Multimodal RL",
arXiv 2510.09285; code github huaixuheqing/VPPO-RL) in pure torch (no verl import).

From the old policy's log-probs of each response token with the real image (log pi_old) and with
a perturbed image (log pi_aug, patches blackened: vgpo_verl.methods.perturb), both from our flagged
old-log-prob pass:

    delta_t = clamp(log pi_aug - log pi_old, -20, 20)
    s_t     = clamp(exp(delta_t) - delta_t - 1, 0, 10)           token visual dependency (k3 estimator)
    TGF:    m_t = 1 for the ceil(share * T_i) tokens of response i with the largest s (ties: earlier
            token first), 0 elsewhere: the policy loss sees only those tokens
    TAS:    S_i = mean_t s_t over response i;  n_i = (S_i - min S) / (max S - min S) clamped to [0, 1]
            beta_max = beta_min + (1 - beta_min) / (mean n + 1e-8)
            f_i = beta_min + n_i * (beta_max - beta_min)         (f = 1 when max S - min S <= 1e-6)
    A'_{i,t} = A_i * f_i * m_{i,t}

TGF as a mask on the advantage gives exactly the fork's gradient: its `loss_token_mask` multiplies the
per-token PPO loss, whose value and gradient are 0 wherever A is 0, and the loss is still averaged
over `response_mask` (verl/trainer/core_algos.py `compute_policy_loss` of the fork). Following the
fork's `dp_actor.py`: min/max of S over its PPO mini-batch, mean n over each micro-batch, so its
scaling depends on how the batch is cut. Ours by default (`scaling_scope: batch`): min, max and
mean over the whole training batch, the same for any cut; `scaling_scope: fork` takes the fork's
contiguous chunks of `fork_minibatch_rows` / `fork_microbatch_rows` rows in batch order.

Settings: the authors' 7B script (examples/configs/train_vppo_7b.sh): top_p_perception_tokens = 0.4,
advantage_scaling_min = 0.9; black probability 0.5 and 14-px patches (perc_utils.py).

Shapes: B responses, T padded response length.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from vgpo_verl.methods.knobs import knob as _knob
from vgpo_verl.methods.knobs import from_knobs, raise_problems

DELTA_CLIP = 20.0
SCORE_MAX = 10.0
RANGE_EPS = 1e-6  # the fork's: below this spread of S, no scaling
MEAN_EPS = 1e-8
SCALING_SCOPES = ("batch", "fork")


@dataclass(frozen=True)
class VPPOConfig:
    """Every VPPO knob (`algorithm.vppo.*`). Defaults: the authors' published 7B run."""

    token_filter: bool = _knob(True, "token gradient filtering (TGF); off: every token keeps its advantage")
    top_share: float = _knob(0.4, "TGF keeps the ceil(top_share * T_i) tokens of each response with the largest s")
    trajectory_shaping: bool = _knob(True, "trajectory advantage shaping (TAS); off: f = 1")
    beta_min: float = _knob(0.9, "TAS: the least visually dependent response's factor")
    scaling_scope: str = _knob("batch", "TAS statistics over the whole batch, or the fork's mini/micro-batch chunks")
    fork_minibatch_rows: int = _knob(0, "scaling_scope=fork: rows per PPO mini-batch (min / max of S)")
    fork_microbatch_rows: int = _knob(0, "scaling_scope=fork: rows per micro-batch (mean of n)")
    black_prob: float = _knob(0.5, "probability that a vision patch of the image goes black")
    seed: int = _knob(0, "perturbation seed; each step uses a seed derived from it and the step")
    image_mean: Any = _knob(None, "normalisation mean of the pixel rows; None: the actor's image processor's")
    image_std: Any = _knob(None, "normalisation std of the pixel rows; None: the actor's image processor's")

    def __post_init__(self):
        """Every problem at once (KnobErrors)."""
        problems = []
        for name in ("token_filter", "trajectory_shaping"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"VPPOConfig.{name}={getattr(self, name)!r}: must be true or false")
        for name in ("top_share", "beta_min", "black_prob"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                problems.append(f"VPPOConfig.{name}={value!r}: must be a number in [0, 1]")
        for name in ("fork_minibatch_rows", "fork_microbatch_rows", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                problems.append(f"VPPOConfig.{name}={value!r}: must be an integer >= 0")
        if self.scaling_scope not in SCALING_SCOPES:
            problems.append(f"VPPOConfig.scaling_scope={self.scaling_scope!r}: allowed values are "
                            f"{list(SCALING_SCOPES)}")
        if self.scaling_scope == "fork" and not (self.fork_minibatch_rows and self.fork_microbatch_rows):
            problems.append("VPPOConfig.scaling_scope='fork' needs fork_minibatch_rows and fork_microbatch_rows > 0 "
                            "(the fork's PPO mini-batch and micro-batch sizes, in responses)")
        channels = {name: _channels_problem(name, getattr(self, name)) for name in ("image_mean", "image_std")}
        problems += channels.values()
        if (self.image_mean is None) != (self.image_std is None):
            problems.append("VPPOConfig.image_mean and image_std: set both or neither")
        elif self.image_std is not None and not channels["image_std"] and any(v <= 0 for v in self.image_std):
            problems.append(f"VPPOConfig.image_std={self.image_std!r}: must be positive")
        raise_problems(problems)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None) -> VPPOConfig:
        """Build from `algorithm.vppo` (dict or DictConfig); KnobErrors lists every problem."""
        values = dict(mapping) if mapping is not None else None
        for name in ("image_mean", "image_std"):
            if values is not None and values.get(name) is not None and not _channels_problem(name, values[name]):
                values[name] = [float(v) for v in values[name]]  # a Hydra ListConfig -> plain floats
        return from_knobs(cls, values, "vppo")


IMAGE_CHANNELS = 3  # every vision tower verl trains reads RGB patch rows, channel-major (vgpo_verl.methods.perturb)


def _channels_problem(name: str, value: Any) -> str | None:
    """image_mean / image_std: null, or one finite number per RGB channel (else the perturbed forward
    would fail, or silently mix channels or make the black rows NaN, in the worker after a rollout)."""
    if value is None:
        return None
    if (isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable)
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
            or len(list(value)) != IMAGE_CHANNELS):
        return (f"VPPOConfig.{name}={value!r}: must be null or a list of {IMAGE_CHANNELS} finite numbers, one per "
                "RGB channel (the image processor's normalisation, e.g. Qwen2.5-VL's image_mean "
                "[0.48145466, 0.4578275, 0.40821073])")
    return None


class VPPOWeights(NamedTuple):
    """Everything VPPO computed; (B, T) unless noted."""

    score: torch.Tensor  # s, 0 at padding
    keep: torch.Tensor  # bool, TGF's kept tokens (every valid token when TGF is off)
    trajectory_score: torch.Tensor  # (B,) S = mean s over the response (its session's), 0 for empty rows
    factor: torch.Tensor  # (B,) f (its session's), 1 when TAS is off or the spread of S is too small


def perception_scores(aug_log_probs: torch.Tensor, old_log_probs: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """s (B, T) = clamp(e^d - d - 1, 0, 10), d = clamp(log pi_aug - log pi_old, +-20); 0 at padding."""
    valid = response_mask.bool()
    delta = (aug_log_probs.float() - old_log_probs.float()).clamp(-DELTA_CLIP, DELTA_CLIP)
    score = (delta.exp() - delta - 1.0).clamp(0.0, SCORE_MAX)
    return torch.where(valid, score, 0.0)


def top_share_mask(score: torch.Tensor, response_mask: torch.Tensor, share: float) -> torch.Tensor:
    """(B, T) bool: the ceil(share * T_i) valid tokens of each row with the largest score (stable ties)."""
    valid = response_mask.bool()
    k = torch.ceil(valid.sum(dim=1).double() * share).long()  # (B,)
    order = torch.sort(score.masked_fill(~valid, -math.inf), dim=1, descending=True, stable=True).indices
    rank_kept = torch.arange(score.shape[1], device=score.device)[None, :] < k[:, None]  # (B, T) in sorted order
    keep = torch.zeros_like(valid).scatter(1, order, rank_kept)
    return keep & valid


def _chunk_ids(batch: int, rows: int, device) -> torch.Tensor:
    return torch.arange(batch, device=device) // rows


def trajectory_factors(trajectory_score: torch.Tensor, has_tokens: torch.Tensor, config: VPPOConfig) -> torch.Tensor:
    """f (B,) from S (B,); rows without tokens get 1 and take no part in the statistics."""
    batch, device = trajectory_score.shape[0], trajectory_score.device
    if config.scaling_scope == "batch":
        range_chunk = mean_chunk = torch.zeros(batch, dtype=torch.long, device=device)
    else:
        range_chunk = _chunk_ids(batch, config.fork_minibatch_rows, device)
        # micro-batches are cut inside each mini-batch
        within = torch.arange(batch, device=device) - range_chunk * config.fork_minibatch_rows
        mean_chunk = range_chunk * (config.fork_minibatch_rows + 1) + within // config.fork_microbatch_rows
    s = trajectory_score.double()
    n_range = int(range_chunk.max()) + 1 if batch else 0
    lo = torch.full((n_range,), math.inf, dtype=s.dtype, device=device).scatter_reduce(
        0, range_chunk, s.masked_fill(~has_tokens, math.inf), "amin")[range_chunk]
    hi = torch.full((n_range,), -math.inf, dtype=s.dtype, device=device).scatter_reduce(
        0, range_chunk, s.masked_fill(~has_tokens, -math.inf), "amax")[range_chunk]
    spread = hi - lo
    # the fork scales a chunk only when it has > 1 scored row and a spread above 1e-6
    n_scored = torch.zeros(n_range, dtype=torch.long, device=device).index_add(0, range_chunk, has_tokens.long())[range_chunk]
    scaled = has_tokens & (n_scored > 1) & (spread > RANGE_EPS)
    normalised = torch.where(scaled, ((s - lo) / torch.where(scaled, spread, 1.0)).clamp(0.0, 1.0), 0.0)
    n_mean = int(mean_chunk.max()) + 1 if batch else 0
    total = torch.zeros(n_mean, dtype=s.dtype, device=device).index_add(0, mean_chunk, normalised)
    count = torch.zeros(n_mean, dtype=s.dtype, device=device).index_add(0, mean_chunk, scaled.double())
    mean_n = (total / count.clamp(min=1))[mean_chunk]
    beta_max = config.beta_min + (1.0 - config.beta_min) / (mean_n + MEAN_EPS)
    factor = config.beta_min + normalised * (beta_max - config.beta_min)
    return torch.where(scaled, factor, 1.0).to(trajectory_score.dtype)


def compute_vppo_weights(aug_log_probs: torch.Tensor, old_log_probs: torch.Tensor, response_mask: torch.Tensor,
                         config: VPPOConfig = VPPOConfig(), counted: torch.Tensor | None = None,
                         session: torch.Tensor | None = None) -> VPPOWeights:
    """s, TGF's mask and TAS's factor.

    Args:
        aug_log_probs: (B, T) log pi_old of each response token with the perturbed image.
        old_log_probs: (B, T) log pi_old with the real image.
        response_mask: (B, T) 0/1 or bool, valid response tokens.
        config: the knobs.
        counted: (B,) bool, rows that are real samples (None = all): verl's balance-batch padding rows
            take no part in the trajectory statistics and keep f = 1.
        session: (B,) int codes of agent sessions whose outputs form one trajectory (None = every row
            is one): S is the mean s over all the session's tokens, one f per session (each session
            counted once in the statistics; scaling_scope=fork cuts sessions in order of their first
            row); TGF stays per row.
    """
    if not aug_log_probs.shape == old_log_probs.shape == response_mask.shape or aug_log_probs.dim() != 2:
        raise ValueError(
            f"aug_log_probs {tuple(aug_log_probs.shape)}, old_log_probs {tuple(old_log_probs.shape)} and "
            f"response_mask {tuple(response_mask.shape)} must all be (batch, response_length)"
        )
    valid = response_mask.bool()
    for name, value in (("aug_log_probs", aug_log_probs), ("old_log_probs", old_log_probs)):
        if not bool(torch.isfinite(value[valid]).all()):
            bad = (~torch.isfinite(value) & valid).any(dim=1).nonzero().flatten().tolist()
            raise ValueError(f"{name} is not finite at valid tokens of rows {bad[:10]}")
    score = perception_scores(aug_log_probs, old_log_probs, valid)
    keep = top_share_mask(score, valid, config.top_share) if config.token_filter else valid
    trajectory, n_trajectories = _trajectory_codes(session, score.shape[0], score.device)
    zeros = torch.zeros(n_trajectories, dtype=score.dtype, device=score.device)
    lengths = zeros.index_add(0, trajectory, valid.sum(dim=1).to(score.dtype))
    trajectory_score = zeros.index_add(0, trajectory, score.sum(dim=1)) / lengths.clamp(min=1)
    factor = torch.ones_like(trajectory_score)
    if config.trajectory_shaping:
        takes_part = lengths > 0
        if counted is not None:
            counted_rows = torch.zeros(n_trajectories, dtype=torch.long, device=score.device).index_add(
                0, trajectory, counted.to(score.device).long())
            takes_part &= counted_rows > 0
        factor = trajectory_factors(trajectory_score, takes_part, config)
    return VPPOWeights(score=score, keep=keep, trajectory_score=trajectory_score[trajectory], factor=factor[trajectory])


def _trajectory_codes(session: torch.Tensor | None, batch: int, device) -> tuple[torch.Tensor, int]:
    """(B,) long code of each row's trajectory, numbered in order of first row, and their number."""
    if session is None:
        return torch.arange(batch, device=device), batch
    codes = torch.unique(torch.as_tensor(session, device=device).reshape(-1), return_inverse=True)[1]
    n = int(codes.max()) + 1 if batch else 0
    first_row = torch.full((n,), batch, dtype=torch.long, device=device).scatter_reduce(
        0, codes, torch.arange(batch, device=device), "amin")
    rank = torch.empty_like(first_row)
    rank[torch.argsort(first_row)] = torch.arange(n, device=device)
    return rank[codes], n


def apply_vppo(advantages: torch.Tensor, weights: VPPOWeights, config: VPPOConfig) -> torch.Tensor:
    """A' (B, T) = A * f * m; with both switches off, A itself (no multiply, no rounding)."""
    if config.trajectory_shaping:
        advantages = advantages * weights.factor[:, None].to(advantages.dtype)
    if config.token_filter:
        advantages = torch.where(weights.keep, advantages, 0.0)
    return advantages


def vppo_metrics(weights: VPPOWeights, response_mask: torch.Tensor, prefix: str = "vppo/") -> dict[str, float]:
    """Scalar diagnostics of one step: token scores (kept vs dropped), kept share, trajectory factors."""
    valid = response_mask.bool()
    if not bool(valid.any()):
        return {}
    rows = valid.any(dim=1)
    dropped = valid & ~weights.keep
    out = {
        "token_score_mean": weights.score[valid].mean().item(),
        "token_score_max": weights.score[valid].max().item(),
        "kept_token_fraction": weights.keep[valid].float().mean().item(),
        "kept_score_mean": weights.score[weights.keep & valid].mean().item(),
        "trajectory_score_mean": weights.trajectory_score[rows].mean().item(),
        "factor_mean": weights.factor[rows].mean().item(),
        "factor_min": weights.factor[rows].min().item(),
        "factor_max": weights.factor[rows].max().item(),
    }
    if bool(dropped.any()):
        out["dropped_score_mean"] = weights.score[dropped].mean().item()
    return {prefix + k: v for k, v in out.items()}
