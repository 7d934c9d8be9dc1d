"""VGPO weights: hand-computed cases per equation, a slow reference, properties, config validation."""

import dataclasses
import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vgpo_verl.methods.vgpo import (VGPOConfig, compute_vgpo_weights, compute_vgpo_weights_detailed, position_bin_means,
                                 vgpo_metrics)
from vgpo_reference import reference_vgpo_weights

TRAJ = VGPOConfig(rho_norm="trajectory")


def _one_row(s, cfg=TRAJ):
    s = torch.tensor([s], dtype=torch.float32)
    return compute_vgpo_weights_detailed(s, torch.ones_like(s), np.array(["a"], dtype=object), cfg)


# ---------------------------------------------------------------- hand-computed, one equation each

def test_rho_is_min_max_of_similarity():
    w = _one_row([0.2, 0.6, 1.0, 0.4])
    torch.testing.assert_close(w.rho[0], torch.tensor([0.0, 0.5, 1.0, 0.25]) / (1.0 + 1e-8 / 0.8))


def test_gate_keeps_top_k_of_late_part_only():
    # T=10, gamma=0.5 -> late = t>=5 (5 tokens), kappa=0.4 -> k=floor(2.0)=2
    s = [9, 8, 7, 6, 5, 0, 3, 1, 4, 2]
    w = _one_row(s, dataclasses.replace(TRAJ, kappa=0.4))
    assert w.gate[0].nonzero().flatten().tolist() == [6, 8]  # two largest of s[5:], early tokens never


def test_gate_ties_at_kth_value_pass():
    s = [0.0, 0.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.1, 0.2]  # late = t>=5, k = max(1, floor(0.2*5)) = 1
    w = _one_row(s)
    assert w.gate[0].nonzero().flatten().tolist() == [5, 6, 7]


def test_k_is_at_least_one():
    w = _one_row([0.0, 1.0, 0.3])  # late = t>=1 (2 tokens), floor(0.2*2) = 0 -> k = 1
    assert w.gate[0].tolist() == [False, True, False]


def test_full_worked_example_psi_and_phi():
    # s = [0, .5, 1, .25]: rho ~ s; late t>=2, k=1 -> gate at t=2; tau = t/3; c = 0.3 tau
    # w~ = [0, .5, 1*(1+.2), .25]; w^ = w~/1.2; psi = 1 + w^ - mean(w^)
    w = _one_row([0.0, 0.5, 1.0, 0.25])
    w_hat = torch.tensor([0.0, 0.5, 1.2, 0.25]) / 1.2
    torch.testing.assert_close(w.psi[0], 1 + w_hat - w_hat.mean(), atol=1e-6, rtol=0)


def test_compensation_schedules():
    s = [0.1, 0.9, 0.2, 0.3, 1.0]  # late t>=2; k=max(1, floor(.2*3))=1 -> gate at t=4 (tau=1), c at tau=1
    for cfg, c in [(TRAJ, 0.3), (dataclasses.replace(TRAJ, schedule="exponential", beta=0.5), 0.5),
                   (dataclasses.replace(TRAJ, schedule="step", beta=0.7, step_ratio=0.9), 0.7)]:
        w = _one_row(s, cfg)
        rho = w.rho[0]
        w_tilde = rho.clone()
        w_tilde[4] = rho[4] * (1 + c)
        w_hat = (w_tilde - w_tilde.min()) / (w_tilde.max() - w_tilde.min())
        torch.testing.assert_close(w.psi[0], 1 + w_hat - w_hat.mean(), atol=1e-6, rtol=0)


def test_exponential_and_step_shape_of_compensation_without_gate():
    s = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 0.0]])  # rho = 1 on t<5 so w~ = 1 + c(tau)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    idx = np.array([0])
    for cfg, expect in [
        (VGPOConfig(rho_norm="batch", gate=False, schedule="exponential", exponent=2.0, beta=1.0),
         1 + torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]) ** 2),
        (VGPOConfig(rho_norm="batch", gate=False, schedule="step", step_ratio=0.5, beta=1.0),
         torch.tensor([1.0, 1.0, 2.0, 2.0, 2.0])),
    ]:
        s2 = s.clone()
        s2[0, 0] = 0.0  # pin the min so rho is well defined: rho = [0, 1, 1, 1, 1]
        w = compute_vgpo_weights_detailed(s2, mask, idx, cfg)
        w_tilde = w.rho[0, :5] * expect
        w_hat = (w_tilde - w_tilde.min()) / (w_tilde.max() - w_tilde.min())
        torch.testing.assert_close(w.psi[0, :5], (1 + w_hat - w_hat.mean()).clamp(0.1, 2.0), atol=1e-6, rtol=0)


def test_psi_is_clipped():
    s = [0.0] * 20 + [1.0]  # one spike: psi there = 1 + 1 - 1/21 > ... , others 1 - 1/21
    cfg = dataclasses.replace(TRAJ, psi_min=0.97, psi_max=1.5, compensation=False)
    w = _one_row(s, cfg)
    assert w.psi[0, -1].item() == pytest.approx(1.5)
    assert w.psi[0, 0].item() == pytest.approx(0.97)


def test_alpha_group_min_max_and_clip():
    # two responses of one prompt; the visually richer one gets alpha 1.5, the other 0.5 -> clipped to 0.9
    s = torch.tensor([[0.0, 1.0, 1.0, 1.0], [0.0, 1.0, 0.0, 0.0]])
    psi, alpha = compute_vgpo_weights(s, torch.ones_like(s), np.array(["q", "q"], dtype=object),
                                      VGPOConfig(compensation=False))
    torch.testing.assert_close(alpha, torch.tensor([1.5, 0.9]), atol=1e-6, rtol=0)


def test_phi_mean_removes_length_bonus():
    # same per-token profile, different lengths: sum favours the longer, mean does not
    s = torch.tensor([[0.0, 1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    idx = np.array([7, 7])
    _, a_sum = compute_vgpo_weights(s, mask, idx, VGPOConfig(compensation=False))
    _, a_mean = compute_vgpo_weights(s, mask, idx, VGPOConfig(compensation=False, phi="mean"))
    assert a_sum[0] > a_sum[1]
    torch.testing.assert_close(a_mean, torch.ones(2))


def test_rho_scopes_differ_as_specified():
    s = torch.tensor([[0.0, 0.5], [0.5, 1.0], [10.0, 20.0]])
    mask = torch.ones_like(s)
    idx = np.array(["a", "a", "b"], dtype=object)
    rho = {n: compute_vgpo_weights_detailed(s, mask, idx, VGPOConfig(rho_norm=n)).rho for n in ("group", "trajectory", "batch")}
    torch.testing.assert_close(rho["group"][0], torch.tensor([0.0, 0.5]), atol=1e-6, rtol=0)
    torch.testing.assert_close(rho["trajectory"][0], torch.tensor([0.0, 1.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(rho["batch"][0], torch.tensor([0.0, 0.025]), atol=1e-6, rtol=0)
    torch.testing.assert_close(rho["group"][2], torch.tensor([0.0, 1.0]), atol=1e-6, rtol=0)


def test_switches_off_give_neutral_weights():
    s = torch.rand(6, 9)
    idx = np.repeat(np.array(["x", "y"], dtype=object), 3)
    psi, alpha = compute_vgpo_weights(s, torch.ones_like(s), idx, VGPOConfig(intra=False, inter=False))
    assert torch.equal(psi, torch.ones_like(s)) and torch.equal(alpha, torch.ones(6))


# ---------------------------------------------------------------- edge cases: finite and neutral

def test_edge_cases_are_finite_and_neutral_where_specified():
    s = torch.tensor([[0.3, 0.3, 0.3], [0.5, 0.0, 0.0], [0.1, 0.2, 0.3], [0.9, 0.8, 0.7], [0.4, 0.4, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0], [1, 1, 1], [1, 1, 0]])
    has_visual = torch.tensor([True, True, True, False, True])
    idx = np.array([0, 1, 1, 2, 3])  # groups of one, an empty row, a text-only row, all-equal scores
    w = compute_vgpo_weights_detailed(s, mask, idx, VGPOConfig(), has_visual)
    assert torch.isfinite(w.psi).all() and torch.isfinite(w.alpha).all()
    assert torch.equal(w.psi[3], torch.ones(3)) and w.alpha[3] == 1  # text-only: exactly 1
    assert torch.equal(w.psi[2], torch.ones(3)) and w.alpha[2] == 1  # empty mask
    assert torch.equal(w.psi[0], torch.ones(3))  # all-equal scores: w^ = 0 everywhere
    assert w.psi[1, 0] == 1 and torch.equal(w.psi[1, 1:], torch.ones(2))  # single token, padding
    assert w.psi[4, 2] == 1  # padding


def test_empty_batch_and_zero_length():
    psi, alpha = compute_vgpo_weights(torch.zeros(0, 5), torch.zeros(0, 5), np.array([], dtype=object))
    assert psi.shape == (0, 5) and alpha.shape == (0,)
    psi, alpha = compute_vgpo_weights(torch.zeros(2, 0), torch.zeros(2, 0), np.array([1, 1]))
    assert psi.shape == (2, 0) and torch.equal(alpha, torch.ones(2))


def test_bad_inputs_name_the_problem():
    s = torch.rand(3, 4)
    with pytest.raises(ValueError, match="index has 2 entries but the batch has 3 rows"):
        compute_vgpo_weights(s, torch.ones_like(s), np.array([0, 1]))
    with pytest.raises(ValueError, match="response_mask"):
        compute_vgpo_weights(s, torch.ones(3, 5), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="has_visual has 2 entries"):
        compute_vgpo_weights(s, torch.ones_like(s), np.array([0, 1, 2]), has_visual=torch.ones(2, dtype=torch.bool))
    s[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        compute_vgpo_weights(s, torch.ones_like(s), np.array([0, 1, 2]))
    # only scored tokens are checked: NaN at padding or on a row without an image is no error
    mask = torch.ones_like(s)
    mask[1, 2] = 0
    psi, alpha = compute_vgpo_weights(s, mask, np.array([0, 1, 2]))
    assert torch.isfinite(psi).all() and torch.isfinite(alpha).all() and psi[1, 2] == 1
    psi, alpha = compute_vgpo_weights(s, torch.ones_like(s), np.array([0, 1, 2]), has_visual=torch.tensor([True, False, True]))
    assert torch.isfinite(psi).all() and (psi[1] == 1).all() and alpha[1] == 1


# ---------------------------------------------------------------- the slow reference

ALL_SWITCHES = list(itertools.product([True, False], repeat=4))


@pytest.mark.parametrize("compensation,gate,intra,inter", ALL_SWITCHES)
@pytest.mark.parametrize("rho_norm", ["group", "trajectory", "batch"])
def test_matches_slow_reference(compensation, gate, intra, inter, rho_norm):
    gen = torch.Generator().manual_seed(hash((compensation, gate, intra, inter, rho_norm)) % 2**31)
    batch, length, n = 12, 17, 4
    s = torch.rand(batch, length, generator=gen) * 2 - 1
    lengths = torch.randint(1, length + 1, (batch,), generator=gen)
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    idx = np.repeat(np.array([f"uid-{g}" for g in range(batch // n)], dtype=object), n)
    has_visual = torch.ones(batch, dtype=torch.bool)
    has_visual[-n:] = False  # one text-only prompt
    for schedule in ("linear", "exponential", "step"):
        cfg = VGPOConfig(compensation=compensation, gate=gate, intra=intra, inter=inter, rho_norm=rho_norm,
                         schedule=schedule, phi="sum" if schedule != "step" else "mean", kappa=0.4)
        psi, alpha = compute_vgpo_weights(s, mask, idx, cfg, has_visual)
        ref_psi, ref_alpha = reference_vgpo_weights(s, mask, idx, cfg, has_visual)
        torch.testing.assert_close(psi, ref_psi, atol=1e-5, rtol=0)
        torch.testing.assert_close(alpha, ref_alpha, atol=1e-5, rtol=0)


@pytest.mark.parametrize("rho_norm", ["group", "trajectory", "batch"])
@pytest.mark.parametrize("phi", ["sum", "mean"])
def test_agent_sessions_match_slow_reference(rho_norm, phi):
    """Multi-output agent sessions: a session is one trajectory (phi, alpha, rho's trajectory scope)."""
    gen = torch.Generator().manual_seed(7)
    batch, length = 14, 11
    s = torch.rand(batch, length, generator=gen)
    mask = (torch.arange(length)[None] < torch.randint(1, length + 1, (batch,), generator=gen)[:, None]).long()
    # group a: sessions 0 (3 outputs), 1 (1), 2 (2); group b: sessions 3 (1), 4 (4), 5 (2), one text-only output
    session = torch.tensor([0, 0, 0, 1, 2, 2, 3, 4, 4, 4, 4, 5, 5, 5])
    idx = np.array(["a"] * 6 + ["b"] * 8, dtype=object)
    has_visual = torch.ones(batch, dtype=torch.bool)
    has_visual[12] = False
    cfg = VGPOConfig(rho_norm=rho_norm, phi=phi, kappa=0.4, alpha_max=5.0, alpha_min=0.0)
    psi, alpha = compute_vgpo_weights(s, mask, idx, cfg, has_visual, session=session)
    ref_psi, ref_alpha = reference_vgpo_weights(s, mask, idx, cfg, has_visual, session=session.tolist())
    torch.testing.assert_close(psi, ref_psi, atol=1e-5, rtol=0)
    torch.testing.assert_close(alpha, ref_alpha, atol=1e-5, rtol=0)
    for k in session.unique():
        assert alpha[session == k].unique().numel() == 1  # one alpha per session
    # and it is not the per-output weighting
    _, per_output = compute_vgpo_weights(s, mask, idx, cfg, has_visual)
    assert not torch.allclose(alpha, per_output)


def test_a_session_cannot_span_prompt_groups():
    s = torch.rand(3, 4)
    with pytest.raises(ValueError, match=r"rows \[[12]\] share a session with rows of another prompt group"):
        compute_vgpo_weights(s, torch.ones_like(s), np.array(["a", "a", "b"], dtype=object),
                             session=torch.tensor([0, 1, 1]))


def test_fork_setting_batch_scope_consecutive_groups_matches_reference():
    """The faithfulness setting: rho over the whole batch, groups of n consecutive rows, published knobs."""
    gen = torch.Generator().manual_seed(0)
    batch, length, n = 16, 64, 8
    s = torch.rand(batch, length, generator=gen)
    lengths = torch.randint(8, length + 1, (batch,), generator=gen)
    mask = torch.arange(length)[None] < lengths[:, None]
    idx = np.repeat(np.arange(batch // n), n)
    cfg = VGPOConfig(rho_norm="batch")
    psi, alpha = compute_vgpo_weights(s, mask, idx, cfg)
    ref_psi, ref_alpha = reference_vgpo_weights(s, mask, idx, cfg)
    torch.testing.assert_close(psi, ref_psi, atol=1e-5, rtol=0)
    torch.testing.assert_close(alpha, ref_alpha, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- invariance of the default scope

def test_group_scope_weights_do_not_depend_on_batch_order_or_neighbours():
    gen = torch.Generator().manual_seed(1)
    s = torch.rand(8, 20, generator=gen)
    mask = torch.arange(20)[None] < torch.randint(2, 21, (8,), generator=gen)[:, None]
    idx = np.array(["a", "a", "a", "a", "b", "b", "b", "b"], dtype=object)
    psi, alpha = compute_vgpo_weights(s, mask, idx)

    others = torch.rand(5, 20, generator=gen) * 3 - 1
    big_s = torch.cat([s, others])
    big_mask = torch.cat([mask, torch.ones(5, 20, dtype=torch.bool)])
    big_idx = np.concatenate([idx, np.array(["c", "c", "d", "d", "d"], dtype=object)])
    perm = torch.randperm(13, generator=gen)
    psi2, alpha2 = compute_vgpo_weights(big_s[perm], big_mask[perm], big_idx[perm.numpy()])
    inverse = torch.argsort(perm)
    assert torch.equal(psi2[inverse][:8], psi)
    assert torch.equal(alpha2[inverse][:8], alpha)


def test_batch_scope_does_depend_on_neighbours():  # the fork's behaviour, kept as a switch
    s = torch.tensor([[0.0, 0.5, 1.0, 0.2]])
    idx = np.array([0])
    alone, _ = compute_vgpo_weights(s, torch.ones_like(s), idx, VGPOConfig(rho_norm="batch"))
    with_other, _ = compute_vgpo_weights(torch.cat([s, torch.tensor([[5.0, -5.0, 0.0, 0.0]])]),
                                         torch.ones(2, 4), np.array([0, 1]), VGPOConfig(rho_norm="batch"))
    assert not torch.allclose(alone[0], with_other[0])


def test_int_tensor_and_string_ids_group_the_same():
    s = torch.rand(6, 5)
    a = compute_vgpo_weights(s, torch.ones_like(s), np.array(["u1", "u2", "u1", "u2", "u3", "u3"], dtype=object))
    b = compute_vgpo_weights(s, torch.ones_like(s), torch.tensor([4, 9, 4, 9, 0, 0]))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# ---------------------------------------------------------------- properties over shapes, masks, groupings

@st.composite
def batches(draw):
    batch = draw(st.integers(1, 7))
    length = draw(st.integers(1, 9))
    flat = st.lists(st.floats(-1, 1, allow_nan=False, width=32), min_size=batch * length, max_size=batch * length)
    s = torch.tensor(draw(flat), dtype=torch.float32).reshape(batch, length)
    mask = torch.tensor(draw(st.lists(st.booleans(), min_size=batch * length, max_size=batch * length))).reshape(batch, length)
    idx = np.array(draw(st.lists(st.sampled_from(["p", "q", "r"]), min_size=batch, max_size=batch)), dtype=object)
    has_visual = torch.tensor(draw(st.lists(st.booleans(), min_size=batch, max_size=batch)))
    cfg = VGPOConfig(
        compensation=draw(st.booleans()), gate=draw(st.booleans()), intra=draw(st.booleans()),
        inter=draw(st.booleans()), rho_norm=draw(st.sampled_from(["group", "trajectory", "batch"])),
        phi=draw(st.sampled_from(["sum", "mean"])), schedule=draw(st.sampled_from(["linear", "exponential", "step"])),
        gamma=draw(st.floats(0, 1)), kappa=draw(st.floats(0, 1)), beta=draw(st.floats(0, 2)),
    )
    return s, mask, idx, has_visual, cfg


@settings(max_examples=300, deadline=None)
@given(batches())
def test_properties_finite_bounded_neutral(case):
    s, mask, idx, has_visual, cfg = case
    w = compute_vgpo_weights_detailed(s, mask, idx, cfg, has_visual)
    assert torch.isfinite(w.psi).all() and torch.isfinite(w.alpha).all()
    scored = mask & has_visual[:, None]
    assert torch.equal(w.scored, scored)
    assert (w.psi[~scored] == 1).all()  # padding and text-only rows
    assert (w.alpha[~scored.any(dim=1)] == 1).all()
    assert ((w.psi[scored] >= cfg.psi_min) & (w.psi[scored] <= cfg.psi_max)).all()
    assert ((w.alpha >= cfg.alpha_min) & (w.alpha <= cfg.alpha_max)).all() or not cfg.inter
    assert ((w.rho >= 0) & (w.rho <= 1)).all()
    assert not w.gate[~scored].any()
    metrics = vgpo_metrics(w, s, has_visual)
    assert all(np.isfinite(v) for v in metrics.values())
    assert metrics["vgpo/no_visual_fraction"] == pytest.approx((~has_visual).float().mean().item())


# ---------------------------------------------------------------- the live forgetting curve

def test_position_bin_means_place_tokens_by_relative_position():
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 0.0],
                           [7.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                           [1.0, 9.0, 3.0, 9.0, 0.0, 0.0],
                           [5.0, 5.0, 5.0, 5.0, 5.0, 5.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 0, 0, 0, 0, 0], [1, 0, 1, 0, 1, 0], [0] * 6]).bool()
    means, counts = position_bin_means(values, mask, 5)
    assert means[0].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]  # five tokens: one per fifth, the last at tau = 1
    assert counts[1].tolist() == [1, 0, 0, 0, 0] and means[1, 0] == 7.0  # a one-token response sits at tau = 0
    # valid tokens 1, 3, 0 at ranks 0, 1, 2 (tau 0, .5, 1); the masked 9s take no part
    assert counts[2].tolist() == [1, 0, 1, 0, 1] and means[2, [0, 2, 4]].tolist() == [1.0, 3.0, 0.0]
    assert torch.isnan(means[3]).all() and counts[3].sum() == 0  # no valid token: no bin


def test_focus_by_position_is_the_mean_over_real_visual_responses_of_their_bin_means():
    fading = torch.linspace(1.0, 0.0, 10).repeat(5, 1)  # similarity decays along every response
    similarity = fading.clone()
    similarity[3] = 50.0  # a row without a visual token and a balance-batch padding row: not counted
    similarity[4] = -50.0
    mask = torch.ones_like(similarity, dtype=torch.bool)
    mask[1, 5:] = False  # a shorter response weighs the same as the others in every bin it reaches
    has_visual = torch.tensor([True, True, True, False, True])
    counted = torch.tensor([True, True, True, True, False])
    weights = compute_vgpo_weights_detailed(similarity, mask, np.zeros(5), VGPOConfig(), has_visual)
    metrics = vgpo_metrics(weights, similarity, has_visual, counted=counted)
    curve = [metrics[f"vgpo/focus_by_position/bin_{k}"] for k in range(5)]
    expected = [(2 * fading[0, 2 * k: 2 * k + 2].mean() + fading[0, k]).item() / 3 for k in range(5)]
    assert curve == pytest.approx(expected)
    assert curve == sorted(curve, reverse=True)  # the forgetting shows as a falling curve


def test_focus_by_position_leaves_out_bins_no_response_reaches():
    similarity = torch.tensor([[0.5, 0.1, 0.0], [0.3, 0.2, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]]).bool()  # two tokens: tau 0 and 1, bins 0 and 4
    weights = compute_vgpo_weights_detailed(similarity, mask, np.zeros(2), VGPOConfig())
    metrics = vgpo_metrics(weights, similarity)
    focus = {k: v for k, v in metrics.items() if "focus_by_position" in k}
    assert focus == pytest.approx({"vgpo/focus_by_position/bin_0": 0.4, "vgpo/focus_by_position/bin_4": 0.15})


# ---------------------------------------------------------------- config

@pytest.mark.parametrize("key,value,message", [
    ("schedule", "cosine", r"schedule='cosine': allowed values are \['linear', 'exponential', 'step'\]"),
    ("rho_norm", "micro_batch", r"rho_norm='micro_batch': allowed values are \['group', 'trajectory', 'batch'\]"),
    ("phi", "max", r"phi='max': allowed values are \['sum', 'mean'\]"),
    ("gamma", 1.5, r"gamma=1.5: must lie in \[0.0, 1.0\]"),
    ("kappa", -0.1, r"kappa=-0.1: must lie in \[0.0, 1.0\]"),
    ("beta", -1.0, r"beta=-1.0: must lie in \[0.0, inf\]"),
    ("exponent", 0.0, r"exponent=0.0: must lie in \(0.0, inf\]"),
    ("gate", "yes", r"gate='yes': must be true or false"),
    ("beta", "0.3", r"beta='0.3': must be a number"),
    ("psi_min", 3.0, r"psi_min=3.0 must be <= psi_max=2.0"),
    ("alpha_max", 0.5, r"alpha_min=0.9 must be <= alpha_max=0.5"),
    ("layer", 1.5, r"layer=1.5: must be an integer"),
])
def test_config_rejects_bad_values_naming_key_and_allowed(key, value, message):
    with pytest.raises(ValueError, match=message):
        VGPOConfig(**{key: value})


def test_config_defaults_are_the_published_run():
    cfg = VGPOConfig()
    assert (cfg.beta, cfg.gamma, cfg.kappa, cfg.schedule) == (0.3, 0.5, 0.2, "linear")
    assert (cfg.compensation, cfg.gate, cfg.intra, cfg.inter) == (True,) * 4
    assert (cfg.rho_norm, cfg.phi, cfg.layer) == ("group", "sum", -1)
    assert (cfg.psi_min, cfg.psi_max, cfg.alpha_min, cfg.alpha_max) == (0.1, 2.0, 0.9, 2.0)
    assert (cfg.exponent, cfg.step_ratio) == (2.0, 0.5)
    assert all(f.metadata.get("help") for f in dataclasses.fields(cfg))


def test_config_from_mapping_rejects_unknown_keys():
    from omegaconf import OmegaConf

    cfg = VGPOConfig.from_mapping(OmegaConf.create({"beta": 0.5, "rho_norm": "batch"}))
    assert cfg.beta == 0.5 and cfg.rho_norm == "batch"
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['betta'\]; allowed: \[.*'dump_dir'"):
        VGPOConfig.from_mapping({"betta": 0.5})


def test_the_trainer_keys_pass_through_to_the_wiring_untouched():
    """`algorithm.vgpo.dump_dir` belongs to the trainer wiring (the dump): allowed, and no knob of the weighting."""
    assert VGPOConfig.from_mapping({"dump_dir": "/tmp/dump", "beta": 0.5}) == VGPOConfig(beta=0.5)
