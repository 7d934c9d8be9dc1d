"""VPPO: hand-computed scores / filter / factors, the loop reference (both scopes), switches off = GRPO,
the image perturbation on pixel rows, and verl's compute_advantage path."""

import math

import pytest
import torch
from omegaconf import OmegaConf

import verl  # noqa: F401
from verl import DataProto
from verl.trainer.ppo.core_algos import get_adv_estimator_fn
from verl.trainer.ppo.ray_trainer import compute_advantage

from _batches import grouped_outcome_batch
from methods_reference import reference_vppo

from vgpo_verl.plugin.estimator import compute_vppo_advantage, estimator_inputs, pop_metrics
from vgpo_verl.methods.perturb import black_patch_mask, black_row, blacken_patches, step_seed
from vgpo_verl.methods.vppo import VPPOConfig, apply_vppo, compute_vppo_weights, perception_scores


def k3(delta):
    return math.exp(delta) - delta - 1.0


# rows: 4 valid tokens, 2 valid, 3 valid; old log-probs 0, aug = old + delta
DELTAS = [[0.0, -1.0, 1.0, -30.0], [1.0, 0.0, 0.0, 0.0], [-1.0, -1.0, -1.0, 0.0]]
MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]])


def _hand_inputs():
    aug = torch.tensor(DELTAS)
    return aug, torch.zeros_like(aug), MASK


def test_hand_computed_scores_filter_and_factors():
    aug, old, mask = _hand_inputs()
    w = compute_vppo_weights(aug, old, mask, VPPOConfig())  # top_share 0.4, beta_min 0.9, batch scope
    # s = clamp(e^d - d - 1, 0, 10), d clamped to +-20: -30 -> -20 -> 19 -> 10
    s1 = [0.0, k3(-1), k3(1), 10.0]
    torch.testing.assert_close(w.score[0], torch.tensor(s1))
    torch.testing.assert_close(w.score[1], torch.tensor([k3(1), 0.0, 0.0, 0.0]))
    # k = ceil(0.4 * T): 2 of 4 (the 10 and e - 2), 1 of 2, 2 of 3 (ties: earlier tokens)
    assert w.keep.tolist() == [[False, False, True, True], [True, False, False, False], [True, True, False, False]]
    # S = mean s; n = min-max over the batch; beta_max = 0.9 + 0.1 / mean n; f = 0.9 + n (beta_max - 0.9)
    S = [sum(s1) / 4, k3(1) / 2, k3(-1)]
    lo, hi = min(S), max(S)
    n = [(x - lo) / (hi - lo) for x in S]
    beta_max = 0.9 + 0.1 / (sum(n) / 3 + 1e-8)
    f = [0.9 + x * (beta_max - 0.9) for x in n]
    torch.testing.assert_close(w.trajectory_score, torch.tensor(S))
    torch.testing.assert_close(w.factor, torch.tensor(f))
    assert f[1] == pytest.approx(0.9) and f[0] == pytest.approx(beta_max)
    # by construction TAS keeps the mean factor at 1 (beta_max = beta_min + (1 - beta_min) / mean n)
    assert w.factor.mean().item() == pytest.approx(1.0)
    adv = torch.tensor([[1.0] * 4, [-1.0] * 4, [2.0] * 4]) * mask
    shaped = apply_vppo(adv, w, VPPOConfig())
    torch.testing.assert_close(shaped, torch.tensor([[0, 0, f[0], f[0]], [-f[1], 0, 0, 0], [2 * f[2], 2 * f[2], 0, 0]]))


def test_fork_scope_one_row_micro_batches_give_one_or_beta_min():
    """The fork's mean over each micro-batch: with one row per micro-batch, mean n is n itself, so
    f = beta_min + n (1 - beta_min) / n = 1 for n > 0 and beta_min for the chunk's minimum."""
    aug, old, mask = _hand_inputs()
    cfg = VPPOConfig(scaling_scope="fork", fork_minibatch_rows=3, fork_microbatch_rows=1)
    f = compute_vppo_weights(aug, old, mask, cfg).factor
    torch.testing.assert_close(f, torch.tensor([1.0, 0.9, 1.0]), atol=1e-6, rtol=0)


def _random(seed, batch=12, length=9):
    gen = torch.Generator().manual_seed(seed)
    mask = (torch.arange(length)[None] < torch.randint(0, length + 1, (batch, 1), generator=gen)).long()
    old = -torch.rand(batch, length, generator=gen) * 3
    aug = old + torch.randn(batch, length, generator=gen) * 1.5
    aug[0, 0] = old[0, 0] + 25.0  # past the +-20 clamp
    adv = torch.randn(batch, 1, generator=gen).expand(batch, length) * mask
    return adv, aug, old, mask


@pytest.mark.parametrize("cfg", [
    VPPOConfig(),
    VPPOConfig(top_share=0.15, beta_min=0.5),
    VPPOConfig(token_filter=False),
    VPPOConfig(trajectory_shaping=False, top_share=1.0),
    VPPOConfig(scaling_scope="fork", fork_minibatch_rows=8, fork_microbatch_rows=3),
    VPPOConfig(scaling_scope="fork", fork_minibatch_rows=5, fork_microbatch_rows=5),
])
def test_matches_the_loop_reference(cfg):
    for seed in range(4):
        adv, aug, old, mask = _random(seed)
        weights = compute_vppo_weights(aug, old, mask, cfg)
        expected, factor = reference_vppo(adv, aug, old, mask, cfg)
        torch.testing.assert_close(weights.factor.double(), torch.tensor(factor, dtype=torch.float64), atol=1e-5, rtol=0)
        torch.testing.assert_close(apply_vppo(adv, weights, cfg).double(), torch.tensor(expected, dtype=torch.float64),
                                   atol=1e-5, rtol=0)


def test_batch_scope_does_not_depend_on_row_order_and_the_fork_scope_does():
    adv, aug, old, mask = _random(1)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    for cfg, independent in ((VPPOConfig(), True),
                             (VPPOConfig(scaling_scope="fork", fork_minibatch_rows=6, fork_microbatch_rows=2), False)):
        f = compute_vppo_weights(aug, old, mask, cfg).factor
        f_perm = compute_vppo_weights(aug[perm], old[perm], mask[perm], cfg).factor
        assert torch.allclose(f[perm], f_perm, atol=1e-6) == independent


def test_scores_ignore_padding_and_stay_in_range():
    aug = torch.tensor([[5.0, -50.0, float("nan")]])
    s = perception_scores(aug, torch.zeros(1, 3), torch.tensor([[1, 1, 0]]))
    assert s[0, 2] == 0 and s[0, 1] == 10.0 and s[0, 0] == pytest.approx(min(10.0, k3(5.0)))


@pytest.mark.parametrize("bad, match", [
    ({"top_share": 1.5}, "top_share=1.5"), ({"beta_min": -0.1}, "beta_min"),
    ({"scaling_scope": "micro"}, "scaling_scope='micro'"), ({"scaling_scope": "fork"}, "fork_minibatch_rows"),
    ({"token_filter": 1}, "token_filter=1"), ({"image_mean": [0.5, 0.5, 0.5]}, "set both"),
    ({"image_mean": [0.5] * 3, "image_std": [0.5, 0.0, 0.5]}, "positive"), ({"top_p": 0.4}, "unknown key.*top_p"),
    # the review's cases: a std that does not fit the mean, a scalar (was a raw TypeError)
    ({"image_mean": [0.48, 0.46, 0.41], "image_std": [0.27, 0.26]}, r"image_std=\[0.27, 0.26\]: must be null or a list of 3"),
    ({"image_mean": 0.5, "image_std": 0.5}, "image_mean=0.5: must be null or a list of 3 finite numbers"),
    ({"image_mean": [0.5] * 4, "image_std": [0.5] * 3}, r"image_mean=\[0.5, 0.5, 0.5, 0.5\]: must be null or a list of 3"),
    ({"image_mean": [float("nan"), 0.5, 0.5], "image_std": [0.5] * 3}, r"image_mean=\[nan, 0.5, 0.5\]: .* 3 finite"),
    ({"image_mean": [0.5] * 3, "image_std": [0.5, float("inf"), 0.5]}, r"image_std=\[0.5, inf, 0.5\]: .* 3 finite"),
    ({"image_mean": [0.5] * 3, "image_std": [0.5, float("-inf"), 0.5]}, r"image_std=\[0.5, -inf, 0.5\]"),
    ({"image_mean": "0.5", "image_std": [0.5] * 3}, "image_mean='0.5'"),
])
def test_config_errors_name_the_key(bad, match):
    with pytest.raises(ValueError, match=match):
        VPPOConfig.from_mapping(bad)


def test_non_finite_log_probs_name_the_rows():
    aug, old, mask = _hand_inputs()
    old = old.clone()
    old[2, 1] = float("inf")
    with pytest.raises(ValueError, match=r"old_log_probs is not finite at valid tokens of rows \[2\]"):
        compute_vppo_weights(aug, old, mask, VPPOConfig())


# ------------------------------------------------------------------ verl's path


def _batch(seed=0, prompts=3, n=4, length=10):
    rewards, mask, uid, gen = grouped_outcome_batch(seed, prompts, n, length)
    batch = rewards.shape[0]
    old = -torch.rand(batch, length, generator=gen)
    aug = old + torch.randn(batch, length, generator=gen)
    return rewards, mask, uid, aug, old


def _verl_advantages(rewards, mask, uid, estimator, algo):
    data = DataProto.from_dict(tensors={"token_level_rewards": rewards, "response_mask": mask}, non_tensors={"uid": uid})
    return compute_advantage(data, adv_estimator=estimator, config=algo, norm_adv_by_std_in_grpo=True).batch["advantages"]


def test_registered_in_verl_switches_off_is_exactly_grpo_and_on_is_the_math():
    assert get_adv_estimator_fn("vppo") is compute_vppo_advantage
    rewards, mask, uid, aug, old = _batch()
    algo = OmegaConf.create({"adv_estimator": "vppo", "norm_adv_by_std_in_grpo": True, "gamma": 1.0, "lam": 1.0,
                             "vppo": {"token_filter": False, "trajectory_shaping": False}})
    grpo = _verl_advantages(rewards, mask, uid, "grpo", algo)
    with estimator_inputs(aug_log_probs=aug, old_log_probs=old):
        off = _verl_advantages(rewards, mask, uid, "vppo", algo)
    torch.testing.assert_close(off, grpo, atol=0, rtol=0)
    algo.vppo = {}
    with estimator_inputs(aug_log_probs=aug, old_log_probs=old):
        on = _verl_advantages(rewards, mask, uid, "vppo", algo)
    expected = apply_vppo(grpo, compute_vppo_weights(aug, old, mask, VPPOConfig()), VPPOConfig())
    torch.testing.assert_close(on, expected, atol=0, rtol=0)
    metrics = pop_metrics()
    assert metrics["vppo/kept_token_fraction"] == pytest.approx(
        (torch.ceil(mask.sum(1) * 0.4).sum() / mask.sum()).item())
    assert metrics["vppo/factor_min"] == pytest.approx(0.9) and metrics["vppo/kept_score_mean"] >= metrics["vppo/dropped_score_mean"]


def test_missing_aug_log_probs_says_what_to_do():
    rewards, mask, uid, _, old = _batch()
    with estimator_inputs(old_log_probs=old), pytest.raises(RuntimeError, match=r"vppo needs \['aug_log_probs'\]"):
        compute_vppo_advantage(rewards, mask, uid)


# ------------------------------------------------------------------ image perturbation


def _image(gen, grid):
    t, h, w = grid
    return torch.randn(t * h * w, 3 * 2 * 14 * 14, generator=gen)


def test_black_row_is_the_normalised_black_per_channel():
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)  # Qwen2.5-VL's processor
    row = black_row(3 * 2 * 14 * 14, mean, std, torch.float32, "cpu")
    per_channel = row.reshape(3, -1)
    for c in range(3):
        assert torch.allclose(per_channel[c], torch.tensor(-mean[c] / std[c]))
    with pytest.raises(ValueError, match="do not fit"):
        black_row(10, mean, std, torch.float32, "cpu")


def test_mask_depends_on_seed_and_image_only_not_on_the_batch_around_it():
    gen = torch.Generator().manual_seed(0)
    a, b = _image(gen, (1, 6, 8)), _image(gen, (2, 4, 4))  # an image and a 2-frame video-like grid
    ga, gb = torch.tensor([[1, 6, 8]]), torch.tensor([[2, 4, 4]])
    alone_a, alone_b = black_patch_mask(a, ga, 5, 0.5), black_patch_mask(b, gb, 5, 0.5)
    together = black_patch_mask(torch.cat([b, a, a]), torch.cat([gb, ga, ga]), 5, 0.5)
    assert torch.equal(together, torch.cat([alone_b, alone_a, alone_a]))  # any order, repeated prompts alike
    assert not torch.equal(alone_a, black_patch_mask(a, ga, 6, 0.5))  # another seed, other patches
    assert torch.equal(alone_a, black_patch_mask(a.clone(), ga, 5, 0.5))  # deterministic


def test_mask_follows_the_image_content():
    """Two different images of one size in one step get different patches; the same image the same."""
    gen = torch.Generator().manual_seed(3)
    a, b, grid = _image(gen, (1, 6, 8)), _image(gen, (1, 6, 8)), torch.tensor([[1, 6, 8]] * 3)
    mask = black_patch_mask(torch.cat([a, b, a]), grid, 5, 0.5).reshape(3, -1)
    assert not torch.equal(mask[0], mask[1]) and torch.equal(mask[0], mask[2])


def test_black_probability_is_respected():
    gen = torch.Generator().manual_seed(1)
    pixels = torch.randn(20000, 24, generator=gen)
    grid = torch.tensor([[1, 100, 100], [1, 100, 100]])
    assert not black_patch_mask(pixels, grid, 3, 0.0).any() and black_patch_mask(pixels, grid, 3, 1.0).all()
    rate = black_patch_mask(pixels, grid, 3, 0.5).float().mean().item()
    assert 0.48 < rate < 0.52
    assert 0.17 < black_patch_mask(pixels, grid, 3, 0.2).float().mean().item() < 0.23


def test_blacken_patches_sets_exactly_the_masked_rows():
    gen = torch.Generator().manual_seed(2)
    pixels, grid = _image(gen, (1, 4, 6)), torch.tensor([[1, 4, 6]])
    out, mask = blacken_patches(pixels, grid, 9, 0.5, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert 0 < mask.sum() < 24
    assert torch.equal(out[~mask], pixels[~mask])
    assert (out[mask] == -1.0).all()  # (0 - 0.5) / 0.5
    with pytest.raises(ValueError, match="covers 48 patch rows"):
        black_patch_mask(pixels, torch.tensor([[2, 4, 6]]), 9, 0.5)


def test_step_seeds_differ_per_step_and_repeat_per_seed():
    assert step_seed(0, 1) == step_seed(0, 1)
    assert len({step_seed(0, s) for s in range(50)}) == 50 and step_seed(0, 1) != step_seed(1, 1)


def test_balance_batch_padding_rows_take_no_part_in_the_statistics():
    adv, aug, old, mask = _random(2)
    cfg = VPPOConfig()
    real = compute_vppo_weights(aug[:-1], old[:-1], mask[:-1], cfg).factor
    aug_pad = aug.clone()
    aug_pad[-1] = old[-1] + 15.0  # a padding row with an extreme score would move min / max / mean
    counted = torch.ones(len(aug), dtype=torch.bool)
    counted[-1] = False
    padded = compute_vppo_weights(aug_pad, old, mask, cfg, counted=counted).factor
    torch.testing.assert_close(padded[:-1], real)
    assert padded[-1] == 1.0
