"""Slow, independent references for the entropy-shaped advantage and VPPO, from their formulas.

Loops over rows and tokens on purpose: they must read like the papers' formulas (and the VPPO fork's
per-chunk procedure), not like the vectorised code. Python floats (float64) throughout.
"""

import math


def reference_entropy_shaping(advantages, entropy, response_mask, alpha, kappa):
    """A' (list of lists): A + min(alpha * H, |A| / kappa) on valid tokens, 0 at padding."""
    out = []
    for a_row, h_row, m_row in zip(advantages.tolist(), entropy.tolist(), response_mask.tolist()):
        out.append([a + min(alpha * h, abs(a) / kappa) if m else 0.0 for a, h, m in zip(a_row, h_row, m_row)])
    return out


def _score(aug, old):
    delta = max(-20.0, min(20.0, aug - old))
    return max(0.0, min(10.0, math.exp(delta) - delta - 1.0))


def reference_vppo(advantages, aug_log_probs, old_log_probs, response_mask, cfg):
    """A' (list of lists) by VPPO's recipe, one response and one chunk at a time."""
    batch, length = response_mask.shape
    mask = response_mask.tolist()
    scores, keep, traj = [], [], []
    for i in range(batch):
        valid = [t for t in range(length) if mask[i][t]]
        s = [_score(float(aug_log_probs[i, t]), float(old_log_probs[i, t])) if mask[i][t] else 0.0
             for t in range(length)]
        scores.append(s)
        k = math.ceil(len(valid) * cfg.top_share)
        ranked = sorted(valid, key=lambda t: (-s[t], t))  # largest first, earlier token on ties
        kept = set(ranked[:k]) if cfg.token_filter else set(valid)
        keep.append([t in kept for t in range(length)])
        traj.append(sum(s[t] for t in valid) / max(len(valid), 1) if valid else None)

    factor = [1.0] * batch
    if cfg.trajectory_shaping:
        if cfg.scaling_scope == "batch":
            range_chunks = [list(range(batch))]
            mean_chunks = {tuple(range(batch)): [list(range(batch))]}
        else:
            range_chunks = [list(range(start, min(start + cfg.fork_minibatch_rows, batch)))
                            for start in range(0, batch, cfg.fork_minibatch_rows)]
            mean_chunks = {tuple(c): [c[j:j + cfg.fork_microbatch_rows] for j in range(0, len(c), cfg.fork_microbatch_rows)]
                           for c in range_chunks}
        for chunk in range_chunks:
            scored = [i for i in chunk if traj[i] is not None]
            if len(scored) < 2:
                continue
            lo, hi = min(traj[i] for i in scored), max(traj[i] for i in scored)
            if hi - lo <= 1e-6:
                continue
            for micro in mean_chunks[tuple(chunk)]:
                rows = [i for i in micro if traj[i] is not None]
                if not rows:
                    continue
                norm = {i: min(1.0, max(0.0, (traj[i] - lo) / (hi - lo))) for i in rows}
                mu = sum(norm.values()) / len(rows)
                beta_max = cfg.beta_min + (1.0 - cfg.beta_min) / (mu + 1e-8)
                for i in rows:
                    factor[i] = cfg.beta_min + norm[i] * (beta_max - cfg.beta_min)

    adv = advantages.tolist()
    return [[adv[i][t] * factor[i] if keep[i][t] else 0.0 for t in range(length)] for i in range(batch)], factor
