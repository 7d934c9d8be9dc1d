"""VGPO token and trajectory weights, sections 1-4 of VGPO_SPEC.md, in pure torch (no verl import).

Read next to the paper (arXiv 2604.09349):

    rho   = min-max of the raw similarity s over a scope (group / trajectory / batch)   Fig. 2a
    c     = beta * schedule(tau),  tau = t / (T - 1)                                     Eq. 5
    G     = late part (t >= floor(gamma*T)) and rho among its top-k, k = max(1, floor(kappa*late))
    w~    = rho * (1 + G * c)                                                            Eq. 6
    w^    = min-max of w~ over the response;  psi = clip(1 + w^ - mean w^, psi_min, psi_max)   Eq. 7-8
    phi   = sum (or mean) of w^;  phi^ = min-max of phi over the uid group
    alpha = clip(1 + phi^ - mean_group phi^, alpha_min, alpha_max)                       Eq. 9-11

Shapes: B responses, T padded response length. Every statistic skips padding and rows without a
visual token; those rows get psi = alpha = 1 exactly. Groups are reduced with scatter ops over
integer uid codes, so the cost is one top-k plus elementwise work, whatever the number of groups.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from vgpo_verl.methods.knobs import knob as _knob
from vgpo_verl.methods.knobs import from_knobs, raise_problems
from vgpo_verl.methods.scoring import LAYER_HELP

EPS = 1e-8  # the fork's epsilon in every min-max normalisation

SCHEDULES = ("linear", "exponential", "step")
RHO_NORMS = ("group", "trajectory", "batch")
PHIS = ("sum", "mean")
# Keys of `algorithm.vgpo` read by the trainer wiring, not by the weighting (vgpo_verl.plugin.dump).
TRAINER_KEYS = ("dump_dir",)
# Bins of relative response position of the live forgetting curve (vgpo/focus_by_position/bin_k).
FOCUS_BINS = 5


@dataclass(frozen=True)
class VGPOConfig:
    """Every VGPO knob. Defaults are the published 7B run (spec, "Hyper-parameters")."""

    beta: float = _knob(0.3, "compensation strength: c = beta * schedule(tau) (Eq. 5)")
    gamma: float = _knob(0.5, "late part of a response starts at t = floor(gamma * T)")
    kappa: float = _knob(0.2, "gate keeps the top k = max(1, floor(kappa * late_len)) late tokens by rho")
    schedule: str = _knob("linear", "compensation schedule: linear beta*tau, exponential beta*tau**exponent, step")
    exponent: float = _knob(2.0, "power p of the exponential schedule")
    step_ratio: float = _knob(0.5, "tau_0 of the step schedule: c = beta * [tau >= tau_0]")
    compensation: bool = _knob(True, "late-response visual attention compensation (Eq. 5-6)")
    gate: bool = _knob(True, "compensate only gated tokens; off: every token (G = 1)")
    intra: bool = _knob(True, "token-level weight psi (Eq. 7-8); off: psi = 1")
    inter: bool = _knob(True, "trajectory weight alpha (Eq. 9-11); off: alpha = 1")
    rho_norm: str = _knob("group", "scope of rho's min-max: group (uid), trajectory, or batch (the fork)")
    phi: str = _knob("sum", "visual accumulation phi: sum over tokens (the fork) or mean (length-neutral)")
    psi_min: float = _knob(0.1, "lower clip of psi")
    psi_max: float = _knob(2.0, "upper clip of psi")
    alpha_min: float = _knob(0.9, "lower clip of alpha")
    alpha_max: float = _knob(2.0, "upper clip of alpha")
    layer: int = _knob(-1, LAYER_HELP)
    focus_chart_every: int = _knob(10, "steps between forgetting-curve charts in W&B / TensorBoard (0: none); "
                                       "read by the logger hook (vgpo_verl.plugin.tracking), not the weighting")

    def __post_init__(self):
        """Every problem at once (KnobErrors); a value of the wrong type gets no range check."""
        problems, typed = [], set()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "bool" and not isinstance(value, bool):
                problems.append(f"VGPOConfig.{f.name}={value!r}: must be true or false")
            elif f.type == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
                problems.append(f"VGPOConfig.{f.name}={value!r}: must be a number")
            elif f.type == "float" and not math.isfinite(value):
                problems.append(f"VGPOConfig.{f.name}={value!r}: must be finite")
            elif f.name == "layer" and (isinstance(value, bool) or not isinstance(value, int)):
                problems.append(f"VGPOConfig.layer={value!r}: must be an integer ({LAYER_HELP})")
            elif f.name == "focus_chart_every" and (isinstance(value, bool) or not isinstance(value, int)
                                                    or value < 0):
                problems.append(f"VGPOConfig.focus_chart_every={value!r}: must be an integer >= 0 (0: no chart)")
            else:
                typed.add(f.name)
        problems += [_choice("schedule", self.schedule, SCHEDULES), _choice("rho_norm", self.rho_norm, RHO_NORMS),
                     _choice("phi", self.phi, PHIS)]
        for key, low, high, low_open in (("beta", 0.0, math.inf, False), ("gamma", 0.0, 1.0, False),
                                         ("kappa", 0.0, 1.0, False), ("exponent", 0.0, math.inf, True),
                                         ("step_ratio", 0.0, 1.0, False)):
            if key in typed:
                problems.append(_within(key, getattr(self, key), low, high, low_open))
        for low, high in (("psi_min", "psi_max"), ("alpha_min", "alpha_max")):
            if {low, high} <= typed and not getattr(self, low) <= getattr(self, high):
                problems.append(f"VGPOConfig.{low}={getattr(self, low)} must be <= {high}={getattr(self, high)}")
        raise_problems(problems)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None) -> VGPOConfig:
        """Build from `algorithm.vgpo` (a dict or an OmegaConf DictConfig); KnobErrors lists every
        problem, unknown keys included.

        TRAINER_KEYS (the debugging dump's `dump_dir`) are accepted and left to the trainer wiring.
        """
        return from_knobs(cls, mapping, "vgpo", passthrough=TRAINER_KEYS)


def _choice(key, value, allowed) -> str | None:
    if value not in allowed:
        return f"VGPOConfig.{key}={value!r}: allowed values are {list(allowed)}"
    return None


def _within(key, value, low, high, low_open=False) -> str | None:
    if value < low or value > high or (low_open and value == low):
        bracket = "(" if low_open else "["
        return f"VGPOConfig.{key}={value!r}: must lie in {bracket}{low}, {high}]"
    return None


class VGPOWeights(NamedTuple):
    """Everything the weighting computed; shapes (B, T) unless noted."""

    psi: torch.Tensor  # token weight, 1 at padding and on rows without a visual token
    alpha: torch.Tensor  # (B,) trajectory weight, 1 on rows that take no part
    rho: torch.Tensor  # visual focus score in [0, 1], 0 outside `scored`
    gate: torch.Tensor  # bool, tokens that received compensation
    scored: torch.Tensor  # bool, valid tokens of rows with a visual token


def group_codes(index: Any, batch_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Map verl's per-row prompt ids (numpy object array of str, ints, list, or tensor) to (B,) codes 0..G-1."""
    if isinstance(index, torch.Tensor):
        ids = index.reshape(-1)
        if ids.numel() != batch_size:
            raise ValueError(f"index has {ids.numel()} entries but the batch has {batch_size} rows")
        return torch.unique(ids, return_inverse=True)[1].to(device=device, dtype=torch.long)
    ids = np.asarray(index, dtype=object).reshape(-1)
    if ids.size != batch_size:
        raise ValueError(f"index has {ids.size} entries but the batch has {batch_size} rows")
    try:
        _, codes = np.unique(ids, return_inverse=True)
    except TypeError as err:  # mixed types cannot be ordered
        raise ValueError(f"index must hold ids of one type (all str or all int): {err}") from err
    return torch.as_tensor(codes.reshape(-1), dtype=torch.long, device=device)


def _row_min_max(x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) -> per-row min and max over valid entries, each (B,); +inf / -inf for empty rows."""
    return x.masked_fill(~valid, math.inf).amin(dim=1), x.masked_fill(~valid, -math.inf).amax(dim=1)


def _segment_min_max(lo: torch.Tensor, hi: torch.Tensor, segment: torch.Tensor, n_segments: int):
    """Reduce per-row (B,) bounds to their segment's bounds, broadcast back to (B,)."""
    seg_lo = lo.new_full((n_segments,), math.inf).scatter_reduce(0, segment, lo, "amin")
    seg_hi = hi.new_full((n_segments,), -math.inf).scatter_reduce(0, segment, hi, "amax")
    return seg_lo[segment], seg_hi[segment]


def _min_max(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(x - lo) / (hi - lo + eps) on valid entries, 0 elsewhere; lo, hi broadcast against x."""
    finite = torch.isfinite(lo) & torch.isfinite(hi)
    lo, hi = torch.where(finite, lo, 0.0), torch.where(finite, hi, 0.0)
    return torch.where(valid, (x - lo) / (hi - lo + EPS), 0.0)


def _compensation(tau: torch.Tensor, config: VGPOConfig) -> torch.Tensor:
    """c = beta * schedule(tau), (B, T)."""
    if config.schedule == "linear":
        return config.beta * tau
    if config.schedule == "exponential":
        return config.beta * tau.pow(config.exponent)
    return config.beta * (tau >= config.step_ratio).to(tau.dtype)


def _late_top_k_gate(rho: torch.Tensor, position: torch.Tensor, length: torch.Tensor, valid: torch.Tensor,
                     config: VGPOConfig) -> torch.Tensor:
    """G (B, T) bool: late tokens whose rho is among the top k of the late part (ties at the k-th pass).

    position (B, T) long: rank of each token among its row's valid tokens; length (B,) long: T_i.
    """
    # float64 so that floor(gamma * T) matches the fork's Python arithmetic bit for bit.
    late_start = torch.floor(config.gamma * length.double()).long()  # (B,)
    late_len = length - late_start
    k = torch.clamp(torch.floor(config.kappa * late_len.double()).long(), min=1)  # (B,)
    late = valid & (position >= late_start[:, None])
    k_max = min(int(k.max()), rho.shape[1])
    top = torch.topk(rho.masked_fill(~late, -math.inf), k_max, dim=1).values  # (B, k_max) descending
    kth = top.gather(1, (k.clamp(max=k_max) - 1)[:, None])  # (B, 1)
    return late & (rho >= kth)


def compute_vgpo_weights_detailed(
    similarity: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any,
    config: VGPOConfig = VGPOConfig(),
    has_visual: torch.Tensor | None = None,
    session: torch.Tensor | None = None,
) -> VGPOWeights:
    """All intermediate VGPO quantities; see `compute_vgpo_weights` for the arguments."""
    if similarity.dim() != 2 or similarity.shape != response_mask.shape:
        raise ValueError(
            f"similarity {tuple(similarity.shape)} and response_mask {tuple(response_mask.shape)} "
            "must both be (batch, response_length)"
        )
    batch, _ = similarity.shape
    device = similarity.device
    if has_visual is None:
        has_visual = torch.ones(batch, dtype=torch.bool, device=device)
    has_visual = torch.as_tensor(has_visual, device=device).bool().reshape(-1)
    if has_visual.numel() != batch:
        raise ValueError(f"has_visual has {has_visual.numel()} entries but the batch has {batch} rows")
    groups = group_codes(index, batch, device)
    mask = response_mask.bool()
    if similarity.numel() == 0:  # empty batch or zero-length responses: nothing to weight
        none = torch.zeros_like(mask)
        return VGPOWeights(torch.ones(similarity.shape, device=device), torch.ones(batch, device=device),
                           torch.zeros(similarity.shape, device=device), none, none)
    n_groups = int(groups.max()) + 1
    trajectory, n_trajectories = _trajectories(session, groups, batch)

    scored = mask & has_visual[:, None]  # (B, T)
    s = similarity.float()
    if not bool((torch.isfinite(s) | ~scored).all()):  # no gather of the scored entries: half the time
        bad = (~torch.isfinite(s) & scored).any(dim=1).nonzero().flatten().tolist()
        raise ValueError(f"similarity is not finite at valid tokens of rows {bad[:10]}")

    # 1. rho: min-max of s over the chosen scope
    segment = {"group": groups, "trajectory": trajectory,
               "batch": torch.zeros(batch, dtype=torch.long, device=device)}[config.rho_norm]
    n_segments = {"group": n_groups, "trajectory": n_trajectories, "batch": 1}[config.rho_norm]
    lo, hi = _segment_min_max(*_row_min_max(s, scored), segment, n_segments)
    rho = _min_max(s, lo[:, None], hi[:, None], scored)

    # 2. compensation of late, visually focused tokens
    length = mask.sum(dim=1)  # (B,) T_i
    position = torch.cumsum(mask, dim=1, dtype=torch.int32) - 1  # rank among valid tokens (int32: a third of int64's time)
    if config.compensation:
        tau = position.float() / (length[:, None] - 1).clamp(min=1).float()
        gate = _late_top_k_gate(rho, position, length, scored, config) if config.gate else scored
        w_tilde = rho * (1.0 + gate.float() * _compensation(tau, config))
    else:
        gate = torch.zeros_like(scored)
        w_tilde = rho

    # 3. token weight psi
    w_hat = _min_max(w_tilde, *(b[:, None] for b in _row_min_max(w_tilde, scored)), scored)
    n_scored = scored.sum(dim=1)  # (B,)
    w_hat_mean = w_hat.sum(dim=1) / n_scored.clamp(min=1)
    psi = torch.ones_like(s)
    if config.intra:
        psi = torch.where(scored, (1.0 + w_hat - w_hat_mean[:, None]).clamp(config.psi_min, config.psi_max), psi)

    # 4. trajectory weight alpha, within each uid group; a trajectory is a session (all its outputs)
    alpha = torch.ones(batch, dtype=s.dtype, device=device)
    if config.inter:
        # Per trajectory (n_trajectories,): its scored tokens and the sum of their w_hat. float64 sums
        # (exact for a one-row trajectory): alpha must not depend on the order of the other rows.
        zeros = torch.zeros(n_trajectories, dtype=torch.float64, device=device)
        traj_n = zeros.index_add(0, trajectory, n_scored.double())
        traj_w = zeros.index_add(0, trajectory, w_hat.sum(dim=1).double())
        traj_group = torch.zeros(n_trajectories, dtype=torch.long, device=device).scatter(0, trajectory, groups)
        takes_part = traj_n > 0
        phi = (traj_w if config.phi == "sum" else traj_w / traj_n.clamp(min=1)).to(s.dtype)
        phi_lo, phi_hi = _segment_min_max(phi.masked_fill(~takes_part, math.inf),
                                          phi.masked_fill(~takes_part, -math.inf), traj_group, n_groups)
        phi_hat = _min_max(phi, phi_lo, phi_hi, takes_part)
        part = takes_part.double()
        group_sum = torch.zeros(n_groups, dtype=torch.float64, device=device).index_add(0, traj_group, phi_hat * part)
        group_n = torch.zeros(n_groups, dtype=torch.float64, device=device).index_add(0, traj_group, part)
        group_mean = (group_sum / group_n.clamp(min=1)).to(s.dtype)[traj_group]
        traj_alpha = torch.where(takes_part, (1.0 + phi_hat - group_mean).clamp(config.alpha_min, config.alpha_max),
                                 torch.ones_like(phi))
        alpha = traj_alpha[trajectory]

    return VGPOWeights(psi=psi, alpha=alpha, rho=rho, gate=gate & scored, scored=scored)


def _trajectories(session: torch.Tensor | None, groups: torch.Tensor, batch: int) -> tuple[torch.Tensor, int]:
    """(B,) long trajectory code of each row and the number of trajectories.

    None: every row is its own trajectory. Otherwise `session` (B,) holds one code per agent session
    (verl's keys `{uid}_{session}_{i}`): the outputs of a session form one trajectory.
    """
    if session is None:
        return torch.arange(batch, device=groups.device), batch
    session = torch.as_tensor(session, device=groups.device).reshape(-1)
    if session.numel() != batch:
        raise ValueError(f"session has {session.numel()} entries but the batch has {batch} rows")
    codes = torch.unique(session, return_inverse=True)[1]
    n = int(codes.max()) + 1
    first_group = torch.full((n,), -1, dtype=torch.long, device=groups.device).scatter(0, codes, groups)
    mixed = (first_group[codes] != groups).nonzero().flatten().tolist()
    if mixed:
        raise ValueError(f"rows {mixed[:10]} share a session with rows of another prompt group (uid)")
    return codes, n


def compute_vgpo_weights(
    similarity: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any,
    config: VGPOConfig = VGPOConfig(),
    has_visual: torch.Tensor | None = None,
    session: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """VGPO weights psi (token) and alpha (trajectory), spec sections 1-4.

    Args:
        similarity: (B, T) float, raw cosine similarity s of each response token with its visual prototype.
        response_mask: (B, T) 0/1 or bool, valid response tokens.
        index: (B,) prompt ids as verl keeps them (`non_tensor_batch["uid"]`: numpy object array of str,
            or ints); responses of one prompt share an id.
        config: the knobs.
        has_visual: (B,) bool, False for rows whose prompt has no visual token (None = all True).
        session: (B,) int codes of agent sessions whose outputs form one trajectory (None = every
            row is one trajectory): alpha (and rho with rho_norm="trajectory") is computed per
            session, phi summing (or averaging) w_hat over all its outputs' tokens, and each
            session counts once in its group's statistics; psi stays per row (output).

    Returns:
        psi: (B, T) float32, 1 at padding and on rows without a visual token.
        alpha: (B,) float32, 1 on rows without a visual token or without valid tokens.
    """
    weights = compute_vgpo_weights_detailed(similarity, response_mask, index, config, has_visual, session)
    return weights.psi, weights.alpha


def position_bin_means(values: torch.Tensor, mask: torch.Tensor, n_bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's mean of `values` in each of n_bins equal parts of its relative position.

    A valid token t of a row with T valid tokens sits at tau = t / (T - 1) (0 when T = 1) and falls
    in bin floor(tau * n_bins), the last bin closed (tau = 1 in bin n_bins - 1).
    values (B, T) float, mask (B, T) bool valid tokens. Returns (B, n_bins) float64 means, NaN
    where a row has no token in a bin (rows without valid tokens: all NaN), and (B, n_bins) float64
    token counts.
    """
    mask = mask.bool()
    position = torch.cumsum(mask.long(), dim=1) - 1  # rank among the row's valid tokens
    length = mask.sum(dim=1, keepdim=True)
    tau = position.double() / (length - 1).clamp(min=1).double()
    bins = torch.where(mask, (tau * n_bins).floor().long().clamp(0, n_bins - 1), 0)
    weight = mask.double()
    shape = (mask.shape[0], n_bins)
    sums = torch.zeros(shape, dtype=torch.float64, device=mask.device).scatter_add_(
        1, bins, torch.where(mask, values.double(), 0.0))
    counts = torch.zeros(shape, dtype=torch.float64, device=mask.device).scatter_add_(1, bins, weight)
    return sums / counts, counts


def vgpo_metrics(weights: VGPOWeights, similarity: torch.Tensor, has_visual: torch.Tensor | None = None,
                 prefix: str = "vgpo/", counted: torch.Tensor | None = None) -> dict[str, float]:
    """Scalar diagnostics of one weighting, for the trainer's metrics dict.

    late_early_rho_ratio is the "visual forgetting" signal: mean rho over the last third of each
    response divided by the mean over its first third (pooled over tokens of scored rows).
    focus_by_position/bin_0 .. bin_{FOCUS_BINS-1}, the forgetting curve along training: mean raw
    similarity in each fifth of the response (position_bin_means), each scored response weighing
    the same (its own mean in the bin first, as vgpo_verl.analyze's curve); a bin that no response
    reaches (only responses shorter than FOCUS_BINS tokens skip bins) is not logged that step.
    counted: (B,) bool, rows that are real samples (None = all); verl's balance-batch padding rows
    are not, and enter no metric (no_visual_fraction included).
    """
    scored = weights.scored
    batch = scored.shape[0]
    if counted is not None:
        counted = counted.to(scored.device).bool().reshape(-1)
        scored = scored & counted[:, None]
        if has_visual is not None:
            has_visual = torch.as_tensor(has_visual, device=counted.device).bool().reshape(-1)[counted]
        batch = int(counted.sum())
    rows = scored.any(dim=1)
    no_visual = (~has_visual.bool()).float().mean().item() if has_visual is not None and batch else 0.0
    out = {"no_visual_fraction": no_visual}
    if bool(scored.any()):
        length = scored.sum(dim=1, keepdim=True).float()
        rel = (torch.cumsum(scored.long(), dim=1) - 1).float() / length.clamp(min=1)  # in [0, 1)
        early = scored & (rel < 1 / 3)
        late = scored & (rel >= 2 / 3)
        rho = weights.rho
        out.update({
            "similarity_mean": similarity.float()[scored].mean().item(),
            "rho_mean": rho[scored].mean().item(),
            "gate_pass_rate": weights.gate[scored].float().mean().item(),
            "psi_mean": weights.psi[scored].mean().item(),
            "psi_min": weights.psi[scored].min().item(),
            "psi_max": weights.psi[scored].max().item(),
            "alpha_mean": weights.alpha[rows].mean().item(),
            "alpha_min": weights.alpha[rows].min().item(),
            "alpha_max": weights.alpha[rows].max().item(),
        })
        if bool(early.any()) and bool(late.any()):
            out["late_early_rho_ratio"] = (rho[late].mean() / (rho[early].mean() + EPS)).item()
        per_response, counts = position_bin_means(similarity, scored, FOCUS_BINS)  # (B, FOCUS_BINS) each
        curve = per_response.nanmean(dim=0)  # rows off `scored` are all NaN and drop out
        out.update({f"focus_by_position/bin_{k}": curve[k].item() for k in counts.sum(dim=0).nonzero().flatten().tolist()})
    return {prefix + k: v for k, v in out.items()}
