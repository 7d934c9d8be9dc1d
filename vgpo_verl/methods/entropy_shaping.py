"""Entropy-shaped advantage (Cheng et al., "Reasoning with Exploration: An Entropy Perspective",
arXiv 2506.14758), in pure torch (no verl import).

Each response token's advantage gets a bonus from the policy's own token entropy:

    H_t   = -sum_v pi_old(v | y_<t) log pi_old(v | y_<t)      the old policy's entropy at token t
    psi_t = min(alpha * H_t.detach(), |A_t| / kappa)           the bonus, >= 0
    A'_t  = A_t + psi_t

The clip |A_t| / kappa with kappa >= 1 keeps A' on A's side of zero: a negative advantage is softened
(towards at most A / 2 with the paper's kappa = 2), never turned positive, and a zero advantage (a
prompt whose responses all scored alike) stays zero. H comes from verl's old-log-prob pass (verl
computes it there with `calculate_entropy=True` for its `actor/entropy` metric), so the method costs
no extra forward. alpha = 0 is verl's GRPO advantage exactly.

Rounding: verl computes H as logsumexp(z) - sum_v softmax(z)_v z_v (`entropy_from_logits`), two
terms of the size of the largest logit that cancel for a confident token, so a true H of 0 comes out
as a small number of either sign. Its error is at most about eps * (1 + log2 V) * max|z| (eps the
precision of the logits' dtype, V the vocabulary): with V <= 2^18 and |z| <= 2^8 that is below
2^12 * eps, `rounding_tolerance(dtype)`: 4.9e-4 nats for float32 logits, 3.9 for float16 and 31 for
bfloat16 (bf16 logits leave the sign of a near-zero entropy undetermined). A negative H down to
minus that tolerance is rounding and counts as 0; below it the values are not entropies (a sign error,
log-probs in the wrong field, misaligned rows) and the estimator stops, naming the rows.

Shapes: B responses, T padded response length.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from vgpo_verl.methods.knobs import knob as _knob
from vgpo_verl.methods.knobs import from_knobs, raise_problems


@dataclass(frozen=True)
class EntropyShapingConfig:
    """The two knobs of the entropy-shaped advantage (`algorithm.entropy_shaping.*`)."""

    alpha: float = _knob(0.4, "entropy coefficient: bonus = min(alpha * H_t, |A_t| / kappa); 0 = GRPO")
    kappa: float = _knob(2.0, "clip: the bonus never exceeds |A_t| / kappa (>= 1, so A never changes sign)")

    def __post_init__(self):
        """Every problem at once (KnobErrors)."""
        problems = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                problems.append(f"EntropyShapingConfig.{f.name}={value!r}: must be a finite number")
            elif f.name == "alpha" and value < 0:
                problems.append(f"EntropyShapingConfig.alpha={value!r}: must be >= 0 (0 = GRPO)")
            elif f.name == "kappa" and value < 1:
                problems.append(f"EntropyShapingConfig.kappa={value!r}: must be >= 1, or the bonus could flip a "
                                "negative advantage")
        raise_problems(problems)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None) -> EntropyShapingConfig:
        """Build from `algorithm.entropy_shaping` (dict or DictConfig); KnobErrors lists every problem."""
        return from_knobs(cls, mapping, "entropy_shaping")


class EntropyShaping(NamedTuple):
    advantages: torch.Tensor  # (B, T) A + bonus, 0 at padding
    bonus: torch.Tensor  # (B, T) min(alpha * H, |A| / kappa), 0 at padding
    clipped: torch.Tensor  # (B, T) bool, valid tokens where |A| / kappa bounded the bonus
    rounded: torch.Tensor  # (B, T) bool, valid tokens whose H was a rounding-level negative (counted as 0)


def rounding_tolerance(dtype: torch.dtype) -> float:
    """How far below 0 verl's entropy of logits in `dtype` can come out by rounding alone (module docstring)."""
    return 2.0**12 * torch.finfo(dtype).eps


def shape_advantages(advantages: torch.Tensor, entropy: torch.Tensor, response_mask: torch.Tensor,
                     config: EntropyShapingConfig = EntropyShapingConfig()) -> EntropyShaping:
    """A' = A + min(alpha * H, |A| / kappa) on valid tokens.

    Args:
        advantages: (B, T) the outcome advantage (GRPO's), 0 at padding.
        entropy: (B, T) the old policy's token entropy H_t (detached here), any value at padding, in the
            dtype verl computed it in (it sets the rounding tolerance; module docstring).
        response_mask: (B, T) 0/1 or bool, valid response tokens.
        config: alpha and kappa.
    """
    if not advantages.shape == entropy.shape == response_mask.shape or advantages.dim() != 2:
        raise ValueError(
            f"advantages {tuple(advantages.shape)}, entropy {tuple(entropy.shape)} and response_mask "
            f"{tuple(response_mask.shape)} must all be (batch, response_length)"
        )
    valid = response_mask.bool()
    tolerance = rounding_tolerance(entropy.dtype) if entropy.is_floating_point() else 0.0
    h = entropy.detach().to(advantages.dtype)
    if not bool(torch.isfinite(h[valid]).all()):
        bad = (~torch.isfinite(h) & valid).any(dim=1).nonzero().flatten().tolist()
        raise ValueError(f"entropy is not finite at valid tokens of rows {bad[:10]}")
    below = valid & (h < -tolerance)
    if bool(below.any()):
        bad = below.any(dim=1).nonzero().flatten().tolist()
        raise ValueError(
            f"entropy is negative beyond rounding at valid tokens of rows {bad[:10]} (min {h[valid].min().item():.3g}, "
            f"tolerance {tolerance:.2g} for {entropy.dtype}): these values are not token entropies"
        )
    rounded = valid & (h < 0)
    h = h.clamp(min=0.0)
    entropy_term = config.alpha * h
    bound = advantages.abs() / config.kappa
    bonus = torch.where(valid, torch.minimum(entropy_term, bound), 0.0)
    clipped = valid & (bound < entropy_term)
    return EntropyShaping(advantages + bonus, bonus, clipped, rounded)


def entropy_metrics(shaping: EntropyShaping, advantages: torch.Tensor, entropy: torch.Tensor,
                    response_mask: torch.Tensor, prefix: str = "entropy/") -> dict[str, float]:
    """Scalar diagnostics: mean entropy, mean bonus, how often the |A|/kappa clip bound the bonus, and
    the bonus relative to |A| over tokens with a non-zero advantage."""
    valid = response_mask.bool()
    if not bool(valid.any()):
        return {}
    moving = valid & (advantages != 0)
    out = {
        "token_entropy_mean": entropy.float()[valid].clamp(min=0.0).mean().item(),
        "rounded_negative_fraction": shaping.rounded[valid].float().mean().item(),
        "bonus_mean": shaping.bonus.float()[valid].mean().item(),
        "bonus_max": shaping.bonus.float()[valid].max().item(),
        "clip_rate": shaping.clipped[valid].float().mean().item(),
        "nonzero_advantage_fraction": (moving.sum() / valid.sum()).item(),
    }
    if bool(moving.any()):
        out["bonus_to_abs_advantage"] = (shaping.bonus[moving].abs().sum() / advantages[moving].abs().sum()).item()
    return {prefix + k: v for k, v in out.items()}
