"""A slow, independent VGPO reference written straight from VGPO_SPEC.md sections 1-4.

Loops over rows and tokens on purpose: it must read like the spec, not like the vectorised code.
Arithmetic is done on float32 scalars in the spec's order, so gate decisions (ties at the k-th
value) are bit-identical to any correct float32 implementation.
"""

import math

import torch

EPS = 1e-8


def _f(x):
    return torch.tensor(x, dtype=torch.float32)


def reference_vgpo_weights(similarity, response_mask, index, cfg, has_visual=None, session=None):
    """Returns psi (B, T) and alpha (B,) as float32 tensors.

    session: per row, the agent session it is an output of (None: every row its own); a session is
    one trajectory (rho_norm=trajectory scope, phi, alpha), psi stays per row.
    """
    batch, length = similarity.shape
    session = list(range(batch)) if session is None else [int(x) for x in session]
    s = similarity.float()
    has_visual = [True] * batch if has_visual is None else [bool(v) for v in has_visual]
    tokens = [[t for t in range(length) if bool(response_mask[i, t])] for i in range(batch)]
    rows = [i for i in range(batch) if has_visual[i] and tokens[i]]

    def rho_scope(i):
        if cfg.rho_norm == "trajectory":
            return [j for j in range(batch) if has_visual[j] and session[j] == session[i]]
        if cfg.rho_norm == "batch":
            return [j for j in range(batch) if has_visual[j]]
        return [j for j in range(batch) if has_visual[j] and index[j] == index[i]]

    psi = torch.ones(batch, length)
    alpha = torch.ones(batch)
    w_sum, n_tok = {}, {}
    for i in rows:
        scope = [s[j, t] for j in rho_scope(i) for t in tokens[j]]
        lo, hi = min(scope), max(scope)
        rho = [(s[i, t] - lo) / (hi - lo + EPS) for t in tokens[i]]
        n = len(rho)

        late_start = math.floor(cfg.gamma * n)
        late = list(range(late_start, n))
        k = max(1, math.floor(cfg.kappa * len(late)))
        kth = sorted((rho[r] for r in late), reverse=True)[k - 1] if late else None

        w = []
        for r in range(n):
            if not cfg.compensation:
                w.append(rho[r])
                continue
            tau = _f(r) / _f(n - 1) if n > 1 else _f(0.0)
            if cfg.schedule == "linear":
                c = cfg.beta * tau
            elif cfg.schedule == "exponential":
                c = cfg.beta * tau ** cfg.exponent
            else:
                c = cfg.beta * _f(1.0 if tau >= cfg.step_ratio else 0.0)
            gated = (r >= late_start and rho[r] >= kth) if cfg.gate else True
            w.append(rho[r] * (1.0 + c) if gated else rho[r])

        lo_w, hi_w = min(w), max(w)
        w_hat = [(x - lo_w) / (hi_w - lo_w + EPS) for x in w]
        mean = sum(float(x) for x in w_hat) / n
        if cfg.intra:
            for r, t in enumerate(tokens[i]):
                psi[i, t] = min(max(1.0 + float(w_hat[r]) - mean, cfg.psi_min), cfg.psi_max)
        w_sum[i], n_tok[i] = sum(float(x) for x in w_hat), n

    if cfg.inter:
        members = {}  # session -> its rows that take part
        for i in rows:
            members.setdefault(session[i], []).append(i)
        phi = {}
        for k, rs in members.items():
            total = sum(w_sum[i] for i in rs)
            phi[k] = total if cfg.phi == "sum" else total / sum(n_tok[i] for i in rs)
        for k, rs in members.items():
            group = [m for m in members if index[members[m][0]] == index[rs[0]]]
            lo, hi = min(phi[m] for m in group), max(phi[m] for m in group)
            phi_hat = {m: (phi[m] - lo) / (hi - lo + EPS) for m in group}
            mean = sum(phi_hat.values()) / len(group)
            for i in range(batch):
                if session[i] == k:
                    alpha[i] = min(max(1.0 + phi_hat[k] - mean, cfg.alpha_min), cfg.alpha_max)
    return psi, alpha
