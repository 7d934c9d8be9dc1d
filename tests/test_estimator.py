"""The `vgpo` estimator as verl calls it: registry, verl's compute_advantage, config, failures."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import verl  # noqa: F401  (the plugin entry point registers vgpo on core_algos import)
from verl import DataProto
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage, get_adv_estimator_fn
from verl.trainer.ppo.ray_trainer import compute_advantage

from _batches import grouped_outcome_batch

from vgpo_verl.methods.vgpo import VGPOConfig, compute_vgpo_weights
from vgpo_verl.plugin.estimator import compute_vgpo_advantage, estimator_inputs, pop_metrics


def _batch(seed=0, prompts=3, n=4, length=10):
    rewards, mask, uid, gen = grouped_outcome_batch(seed, prompts, n, length)
    batch = rewards.shape[0]
    similarity = torch.rand(batch, length, generator=gen) * 2 - 1
    return rewards, mask, uid, similarity


def _algo(**vgpo):
    return OmegaConf.create({"adv_estimator": "vgpo", "norm_adv_by_std_in_grpo": True, "gamma": 1.0, "lam": 1.0,
                             "vgpo": vgpo})


def _verl_compute_advantage(rewards, mask, uid, estimator, algo):
    data = DataProto.from_dict(tensors={"token_level_rewards": rewards, "response_mask": mask},
                               non_tensors={"uid": uid})
    out = compute_advantage(data, adv_estimator=estimator, config=algo,
                            norm_adv_by_std_in_grpo=algo.get("norm_adv_by_std_in_grpo", True))
    return out.batch["advantages"]


def test_registered_under_vgpo():
    assert get_adv_estimator_fn("vgpo") is compute_vgpo_advantage


def test_all_switches_off_equals_verl_grpo_exactly():
    rewards, mask, uid, similarity = _batch()
    algo = _algo(compensation=False, gate=False, intra=False, inter=False)
    with estimator_inputs(visual_similarity=similarity, has_visual=torch.ones(len(uid), dtype=torch.bool)):
        ours = _verl_compute_advantage(rewards, mask, uid, "vgpo", algo)
    grpo = _verl_compute_advantage(rewards, mask, uid, "grpo", OmegaConf.create({"adv_estimator": "grpo"}))
    assert torch.equal(ours, grpo)


def test_advantage_is_grpo_times_alpha_times_psi_through_verl():
    rewards, mask, uid, similarity = _batch(seed=3)
    has_visual = torch.ones(len(uid), dtype=torch.bool)
    has_visual[:4] = False  # the first prompt is text-only
    algo = _algo(beta=0.5, kappa=0.4)
    with estimator_inputs(visual_similarity=similarity, has_visual=has_visual):
        ours = _verl_compute_advantage(rewards, mask, uid, "vgpo", algo)
    grpo, _ = compute_grpo_outcome_advantage(rewards, mask, uid)
    psi, alpha = compute_vgpo_weights(similarity, mask, uid, VGPOConfig(beta=0.5, kappa=0.4), has_visual)
    torch.testing.assert_close(ours, grpo * alpha[:, None] * psi)
    assert torch.equal(ours[:4], grpo[:4])  # text-only rows: plain DAPO
    assert (ours[mask == 0] == 0).all()
    assert not torch.allclose(ours, grpo)


@pytest.mark.parametrize("intra, inter", [(False, True), (True, False)])
def test_one_level_alone_trains_its_own_weight(intra, inter):
    """intra=false, inter=true is GRPO times alpha (psi = 1), and the other way round: neither is plain GRPO."""
    rewards, mask, uid, similarity = _batch(seed=5)
    has_visual = torch.ones(len(uid), dtype=torch.bool)
    with estimator_inputs(visual_similarity=similarity, has_visual=has_visual):
        ours = _verl_compute_advantage(rewards, mask, uid, "vgpo", _algo(intra=intra, inter=inter))
    grpo, _ = compute_grpo_outcome_advantage(rewards, mask, uid)
    psi, alpha = compute_vgpo_weights(similarity, mask, uid, VGPOConfig(intra=intra, inter=inter), has_visual)
    assert torch.equal(psi, torch.ones_like(psi)) != intra and torch.equal(alpha, torch.ones_like(alpha)) != inter
    torch.testing.assert_close(ours, grpo * alpha[:, None] * psi)
    assert not torch.allclose(ours, grpo)


def test_entropy_shaping_metrics_leave_out_balance_batch_padding_rows():
    """verl's balance-batch padding rows (is_padding) are no samples: a huge entropy there moves no metric."""
    from vgpo_verl.plugin.estimator import compute_entropy_shaped_advantage

    rewards, mask, uid, _ = _batch(seed=2)
    entropy = torch.rand(mask.shape, generator=torch.Generator().manual_seed(2))
    is_padding = torch.zeros(len(uid), dtype=torch.bool)
    is_padding[-1] = True
    config = OmegaConf.create({"entropy_shaping": {}})
    metrics = {}
    for name, padding, values in (("real", is_padding, entropy), ("planted", is_padding, entropy.clone())):
        if name == "planted":
            values[-1] = 1e3  # only the padding row changes
        with estimator_inputs(entropy=values, is_padding=padding):
            compute_entropy_shaped_advantage(rewards, mask, uid, config=config)
        metrics[name] = pop_metrics()
    assert metrics["planted"] == metrics["real"] and metrics["real"]
    with estimator_inputs(entropy=values):  # without the tag the same row counts
        compute_entropy_shaped_advantage(rewards, mask, uid, config=config)
    assert pop_metrics() != metrics["real"]


def test_knobs_come_from_algorithm_vgpo():
    rewards, mask, uid, similarity = _batch(seed=5)
    hv = torch.ones(len(uid), dtype=torch.bool)
    with estimator_inputs(visual_similarity=similarity, has_visual=hv):
        default = compute_vgpo_advantage(rewards, mask, uid, config=_algo())[0]
        strong = compute_vgpo_advantage(rewards, mask, uid, config=_algo(beta=2.0, gate=False))[0]
        explicit = compute_vgpo_advantage(rewards, mask, uid, config=_algo(beta=0.3))[0]
    assert torch.equal(default, explicit)
    assert not torch.allclose(default, strong)
    with estimator_inputs(visual_similarity=similarity, has_visual=hv), pytest.raises(ValueError, match=r"betta"):
        compute_vgpo_advantage(rewards, mask, uid, config=_algo(betta=0.5))
    with estimator_inputs(visual_similarity=similarity, has_visual=hv), pytest.raises(ValueError, match=r"rho_norm='micro'"):
        compute_vgpo_advantage(rewards, mask, uid, config=_algo(rho_norm="micro"))


def test_norm_adv_by_std_is_read_from_the_algorithm_config():
    rewards, mask, uid, similarity = _batch(seed=7)
    hv = torch.ones(len(uid), dtype=torch.bool)
    algo = _algo(intra=False, inter=False)
    algo.norm_adv_by_std_in_grpo = False
    with estimator_inputs(visual_similarity=similarity, has_visual=hv):
        ours = _verl_compute_advantage(rewards, mask, uid, "vgpo", algo)
    dr_grpo, _ = compute_grpo_outcome_advantage(rewards, mask, uid, norm_adv_by_std_in_grpo=False)
    std_grpo, _ = compute_grpo_outcome_advantage(rewards, mask, uid, norm_adv_by_std_in_grpo=True)
    assert torch.equal(ours, dr_grpo) and not torch.equal(ours, std_grpo)


def test_missing_scores_fail_loudly_with_the_fix():
    rewards, mask, uid, _ = _batch()
    with pytest.raises(RuntimeError, match="bypass_mode"):
        _verl_compute_advantage(rewards, mask, uid, "vgpo", _algo())


def test_scores_of_another_batch_are_rejected():
    rewards, mask, uid, similarity = _batch()
    with estimator_inputs(visual_similarity=similarity[:, :5], has_visual=torch.ones(len(uid), dtype=torch.bool)):
        with pytest.raises(ValueError, match="does not match response_mask"):
            _verl_compute_advantage(rewards, mask, uid, "vgpo", _algo())


def test_scores_do_not_leak_out_of_their_context():
    rewards, mask, uid, similarity = _batch()
    with estimator_inputs(visual_similarity=similarity, has_visual=torch.ones(len(uid), dtype=torch.bool)):
        pass
    with pytest.raises(RuntimeError):
        compute_vgpo_advantage(rewards, mask, uid, config=_algo())


def test_metrics_are_reported_once():
    rewards, mask, uid, similarity = _batch()
    hv = torch.ones(len(uid), dtype=torch.bool)
    hv[0] = False
    with estimator_inputs(visual_similarity=similarity, has_visual=hv):
        _verl_compute_advantage(rewards, mask, uid, "vgpo", _algo())
    metrics = pop_metrics()
    expected = {"similarity_mean", "rho_mean", "gate_pass_rate", "psi_mean", "psi_min", "psi_max", "alpha_mean",
                "alpha_min", "alpha_max", "no_visual_fraction", "late_early_rho_ratio",
                *(f"focus_by_position/bin_{k}" for k in range(5))}
    assert set(metrics) == {f"vgpo/{k}" for k in expected}
    assert metrics["vgpo/no_visual_fraction"] == pytest.approx(1 / len(uid))
    assert metrics["vgpo/psi_min"] <= metrics["vgpo/psi_mean"] <= metrics["vgpo/psi_max"]
    assert 0 < metrics["vgpo/gate_pass_rate"] < 1
    assert pop_metrics() == {}


def test_late_early_ratio_sees_visual_forgetting():
    from vgpo_verl.methods.vgpo import compute_vgpo_weights_detailed, vgpo_metrics

    fading = torch.linspace(1.0, 0.0, 30).repeat(4, 1)  # similarity decays along the response
    w = compute_vgpo_weights_detailed(fading, torch.ones_like(fading), np.zeros(4), VGPOConfig())
    assert vgpo_metrics(w, fading)["vgpo/late_early_rho_ratio"] < 0.5
    w = compute_vgpo_weights_detailed(fading.flip(1), torch.ones_like(fading), np.zeros(4), VGPOConfig())
    assert vgpo_metrics(w, fading.flip(1))["vgpo/late_early_rho_ratio"] > 2


# ---------------------------------------------------------------- agent loops with several outputs per session


def _multi_output(seed=5):
    """Two prompts x sessions with 1-3 outputs each, keys as verl's v1 agent loop writes them."""
    keys = ["a_0_0", "a_0_1", "a_0_2", "a_1_0", "a_2_0", "a_2_1", "b_0_0", "b_1_0", "b_1_1", "b_2_0", "b_3_0"]
    gen = torch.Generator().manual_seed(seed)
    batch, length = len(keys), 9
    lengths = torch.randint(2, length + 1, (batch,), generator=gen)
    mask = (torch.arange(length)[None] < lengths[:, None]).float()
    rewards = torch.zeros(batch, length)
    rewards[torch.arange(batch), lengths - 1] = torch.randint(0, 2, (batch,), generator=gen).float()
    rewards[[2, 4, 5, 7, 8]] *= 0  # sessions' outcomes differ (final outputs: a 0/0/0, b ...)
    rewards[2, lengths[2] - 1], rewards[8, lengths[8] - 1] = 1.0, 1.0
    uid = np.array([k.split("_")[0] for k in keys], dtype=object)
    similarity = torch.rand(batch, length, generator=gen) * 2 - 1
    return keys, rewards, mask, uid, similarity


def _verl_multi(keys, rewards, mask, uid, estimator, algo):
    from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories

    data = DataProto.from_dict(tensors={"token_level_rewards": rewards, "response_mask": mask},
                               non_tensors={"uid": uid})
    out = compute_advantage_for_multi_trajectories(data, batch_keys=keys, adv_estimator=estimator, num_repeat=1,
                                                   norm_adv_by_std_in_grpo=True, config=algo)
    return out.batch["advantages"]


def test_multi_output_sessions_all_switches_off_equal_verl_multi_output_grpo():
    keys, rewards, mask, uid, similarity = _multi_output()
    algo = _algo(compensation=False, gate=False, intra=False, inter=False)
    with estimator_inputs(visual_similarity=similarity, has_visual=torch.ones(len(uid), dtype=torch.bool)):
        ours = _verl_multi(keys, rewards, mask, uid, "vgpo", algo)
    grpo = _verl_multi(keys, rewards, mask, uid, "grpo", OmegaConf.create({"adv_estimator": "grpo"}))
    assert torch.equal(ours, grpo)
    # verl's rule: one value per session, from its final output (the plain per-row GRPO differs)
    per_row, _ = compute_grpo_outcome_advantage(rewards, mask, uid)
    assert not torch.allclose(ours, per_row)


def test_multi_output_sessions_weight_alpha_per_session_psi_per_output():
    from vgpo_verl.plugin.estimator import session_grpo_advantage

    keys, rewards, mask, uid, similarity = _multi_output(seed=6)
    has_visual = torch.ones(len(uid), dtype=torch.bool)
    algo = _algo(kappa=0.4)
    with estimator_inputs(visual_similarity=similarity, has_visual=has_visual):
        ours = _verl_multi(keys, rewards, mask, uid, "vgpo", algo)
    session = torch.tensor([0, 0, 0, 1, 2, 2, 3, 4, 4, 5, 6])
    is_final = torch.tensor([k in ("a_0_2", "a_1_0", "a_2_1", "b_0_0", "b_1_1", "b_2_0", "b_3_0") for k in keys])
    grpo = session_grpo_advantage(rewards, mask, uid, session, is_final, 1e-6, True)
    psi, alpha = compute_vgpo_weights(similarity, mask, uid, VGPOConfig(kappa=0.4), has_visual, session=session)
    torch.testing.assert_close(ours, grpo * alpha[:, None] * psi)
    assert not torch.allclose(alpha, compute_vgpo_weights(similarity, mask, uid, VGPOConfig(kappa=0.4))[1])


def test_single_output_sessions_are_the_plain_estimator():
    rewards, mask, uid, similarity = _batch(seed=2)
    keys = [f"{u}_{i}_0" for i, u in enumerate(uid)]
    has_visual = torch.ones(len(uid), dtype=torch.bool)
    with estimator_inputs(visual_similarity=similarity, has_visual=has_visual):
        through_verl = _verl_multi(keys, rewards, mask, uid, "vgpo", _algo())
        direct, _ = compute_vgpo_advantage(rewards, mask, uid, config=_algo())
    assert torch.equal(through_verl, direct)


# ---------------------------------------------------------------- the comparison methods on agent sessions


def _review_case():
    """The review's case: keys a_0_0, a_0_1, a_1_0, a_2_0 with rewards 1, 1, 0, 0 (verl's grpo gives
    [1.1547, 1.1547, -0.5773, -0.5773]: session a_0 counts once, by its final output)."""
    keys = ["a_0_0", "a_0_1", "a_1_0", "a_2_0"]
    mask = torch.ones(4, 3)
    rewards = torch.zeros(4, 3)
    rewards[:2, -1] = 1.0
    return keys, rewards, mask, np.array(["a"] * 4, dtype=object)


@pytest.mark.parametrize("estimator, knobs, inputs", [
    ("entropy_shaping", {"alpha": 0.0}, lambda b, t: {"entropy": torch.rand(b, t) * 2}),
    ("vppo", {"token_filter": False, "trajectory_shaping": False},
     lambda b, t: {"aug_log_probs": -torch.rand(b, t) * 3, "old_log_probs": -torch.rand(b, t)}),
])
def test_comparison_methods_with_switches_off_equal_verls_multi_output_grpo(estimator, knobs, inputs):
    algo = OmegaConf.create({"adv_estimator": estimator, "norm_adv_by_std_in_grpo": True, "gamma": 1.0, "lam": 1.0,
                             estimator: knobs})
    grpo_algo = OmegaConf.create({"adv_estimator": "grpo"})
    keys, rewards, mask, uid = _review_case()
    with estimator_inputs(**inputs(*mask.shape)):
        ours = _verl_multi(keys, rewards, mask, uid, estimator, algo)
    torch.testing.assert_close(ours[:, 0], torch.tensor([1.1547, 1.1547, -0.5773, -0.5773]), atol=1e-4, rtol=0)
    assert torch.equal(ours, _verl_multi(keys, rewards, mask, uid, "grpo", grpo_algo))
    keys, rewards, mask, uid, _ = _multi_output(seed=7)
    with estimator_inputs(**inputs(*mask.shape)):
        ours = _verl_multi(keys, rewards, mask, uid, estimator, algo)
    assert torch.equal(ours, _verl_multi(keys, rewards, mask, uid, "grpo", grpo_algo))


def _sessions_of(keys):
    from vgpo_verl.plugin.trainer_wiring import agent_session_codes

    return agent_session_codes(keys)


def test_entropy_shaping_on_sessions_shapes_each_token_of_the_sessions_advantage():
    from vgpo_verl.methods.entropy_shaping import EntropyShapingConfig, shape_advantages
    from vgpo_verl.plugin.estimator import session_grpo_advantage

    keys, rewards, mask, uid, _ = _multi_output(seed=8)
    entropy = torch.rand(*mask.shape, generator=torch.Generator().manual_seed(8)) * 2
    algo = OmegaConf.create({"adv_estimator": "entropy_shaping", "norm_adv_by_std_in_grpo": True, "gamma": 1.0,
                             "lam": 1.0, "entropy_shaping": {}})
    with estimator_inputs(entropy=entropy):
        ours = _verl_multi(keys, rewards, mask, uid, "entropy_shaping", algo)
    session, is_final = _sessions_of(keys)
    base = session_grpo_advantage(rewards, mask, uid, session, is_final, 1e-6, True)
    torch.testing.assert_close(ours, shape_advantages(base, entropy, mask, EntropyShapingConfig()).advantages)


def test_vppo_on_sessions_filters_per_output_and_scales_per_session():
    from vgpo_verl.plugin.estimator import session_grpo_advantage
    from vgpo_verl.methods.vppo import VPPOConfig, compute_vppo_weights, perception_scores, top_share_mask, trajectory_factors

    keys, rewards, mask, uid, _ = _multi_output(seed=9)
    gen = torch.Generator().manual_seed(9)
    old = -torch.rand(*mask.shape, generator=gen)
    aug = old - torch.rand(*mask.shape, generator=gen) * 2
    algo = OmegaConf.create({"adv_estimator": "vppo", "norm_adv_by_std_in_grpo": True, "gamma": 1.0, "lam": 1.0,
                             "vppo": {}})
    with estimator_inputs(aug_log_probs=aug, old_log_probs=old):
        ours = _verl_multi(keys, rewards, mask, uid, "vppo", algo)
    session, is_final = _sessions_of(keys)
    # by hand: S per session over all its outputs' tokens, one factor per session, TGF per output
    score = perception_scores(aug, old, mask)
    n_sessions = int(session.max()) + 1
    per_session = torch.stack([score[session == k].sum() / mask[session == k].sum() for k in range(n_sessions)])
    factor = trajectory_factors(per_session, torch.ones(n_sessions, dtype=torch.bool), VPPOConfig())[session]
    keep = top_share_mask(score, mask, 0.4)
    base = session_grpo_advantage(rewards, mask, uid, session, is_final, 1e-6, True)
    torch.testing.assert_close(ours, torch.where(keep, base * factor[:, None], 0.0))
    weights = compute_vppo_weights(aug, old, mask, VPPOConfig(), session=session)
    assert all(weights.factor[session == k].unique().numel() == 1 for k in range(n_sessions))
    assert not torch.allclose(weights.factor, compute_vppo_weights(aug, old, mask, VPPOConfig()).factor)
