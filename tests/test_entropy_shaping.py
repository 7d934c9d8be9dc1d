"""Entropy-shaped advantage: hand-computed cases, the loop reference, alpha = 0 is GRPO, verl's path."""

import pytest
import torch
from omegaconf import OmegaConf

import verl  # noqa: F401  (the plugin entry point registers our estimators on core_algos import)
from verl import DataProto
from verl.trainer.ppo.core_algos import get_adv_estimator_fn
from verl.trainer.ppo.ray_trainer import compute_advantage

from _batches import grouped_outcome_batch
from methods_reference import reference_entropy_shaping

from vgpo_verl.methods.entropy_shaping import EntropyShapingConfig, entropy_metrics, shape_advantages
from vgpo_verl.plugin.estimator import compute_entropy_shaped_advantage, estimator_inputs, pop_metrics


def test_hand_computed_bonus_is_clipped_by_abs_advantage_over_kappa():
    # alpha = 0.4, kappa = 2: bonus = min(0.4 H, |A| / 2)
    adv = torch.tensor([[1.0, 1.0, 1.0, 0.0], [-1.0, -1.0, -1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    entropy = torch.tensor([[0.5, 2.0, 0.1, 9.0], [0.5, 2.0, 0.1, 9.0], [3.0, 3.0, 3.0, 3.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1]])
    shaped = shape_advantages(adv, entropy, mask, EntropyShapingConfig(alpha=0.4, kappa=2.0))
    # 0.4 * 0.5 = 0.2 < 0.5; 0.4 * 2 = 0.8 > 0.5 -> 0.5 (clipped); 0.4 * 0.1 = 0.04
    expected = torch.tensor([[1.2, 1.5, 1.04, 0.0], [-0.8, -0.5, -0.96, 0.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(shaped.advantages, expected)
    assert shaped.clipped.tolist() == [[False, True, False, False], [False, True, False, False], [True] * 4]
    # a zero advantage stays zero, a negative one stays negative
    assert (shaped.advantages[1, :3] < 0).all() and (shaped.advantages[2] == 0).all()


def test_matches_the_loop_reference_on_random_batches():
    gen = torch.Generator().manual_seed(3)
    for alpha, kappa in [(0.4, 2.0), (1.5, 1.0), (0.05, 7.0)]:
        adv = torch.randn(6, 11, generator=gen)
        entropy = torch.rand(6, 11, generator=gen) * 3
        mask = (torch.arange(11)[None] < torch.randint(0, 12, (6, 1), generator=gen)).long()
        adv = adv * mask
        got = shape_advantages(adv, entropy, mask, EntropyShapingConfig(alpha=alpha, kappa=kappa)).advantages
        expected = torch.tensor(reference_entropy_shaping(adv, entropy, mask, alpha, kappa))
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_entropy_is_detached():
    adv = torch.tensor([[1.0, -1.0]])
    entropy = torch.tensor([[0.3, 0.3]], requires_grad=True)
    shaped = shape_advantages(adv, entropy, torch.ones(1, 2), EntropyShapingConfig())
    assert not shaped.advantages.requires_grad


@pytest.mark.parametrize("bad, match", [
    ({"alpha": -0.1}, "alpha=-0.1"), ({"kappa": 0.5}, "kappa=0.5"), ({"kappa": float("inf")}, "finite"),
    ({"alpha": True}, "alpha=True"), ({"kapa": 2}, "unknown key.*kapa"),
])
def test_config_errors_name_the_key(bad, match):
    with pytest.raises(ValueError, match=match):
        EntropyShapingConfig.from_mapping(bad)


def test_bad_entropy_names_the_rows():
    entropy = torch.tensor([[0.1, float("nan")], [0.1, 0.2]])
    with pytest.raises(ValueError, match=r"rows \[0\]"):
        shape_advantages(torch.zeros(2, 2), entropy, torch.ones(2, 2), EntropyShapingConfig())
    with pytest.raises(ValueError, match=r"negative beyond rounding at valid tokens of rows \[0, 1\]"):
        shape_advantages(torch.zeros(2, 2), -torch.ones(2, 2), torch.ones(2, 2), EntropyShapingConfig())


def test_rounding_level_negative_entropy_of_confident_tokens_counts_as_zero():
    """verl's own entropy_from_logits on confident float32 logits over a Qwen-size vocabulary (the review's
    case: randn * 2 + 40, top token +30) comes out slightly negative; the step must go on."""
    from verl.utils.torch_functional import entropy_from_logits

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(256, 151936, generator=gen) * 2 + 40
    logits[torch.arange(256), torch.randint(0, 151936, (256,), generator=gen)] += 30
    entropy = entropy_from_logits(logits).reshape(16, 16)
    assert entropy.min() < 0, "no rounding-level negative on this machine: the case does not test anything"
    mask = torch.ones(16, 16)
    adv = torch.randn(16, 1, generator=gen).expand(16, 16).contiguous()
    shaped = shape_advantages(adv, entropy, mask, EntropyShapingConfig())
    torch.testing.assert_close(shaped.bonus, torch.minimum(0.4 * entropy.clamp(min=0), adv.abs() / 2))
    assert (shaped.bonus >= 0).all() and torch.equal(shaped.rounded, entropy < 0)
    metrics = entropy_metrics(shaped, adv, entropy, mask)
    assert metrics["entropy/rounded_negative_fraction"] == pytest.approx((entropy < 0).float().mean().item())


@pytest.mark.parametrize("dtype, rounding, bug", [
    (torch.float32, -4e-4, -1e-3),  # tolerance 2^12 * eps: 4.9e-4 nats
    (torch.bfloat16, -0.25, -40.0),  # bf16 logits: 31 nats, the sign of a near-zero entropy is noise
])
def test_the_line_between_rounding_and_a_bug_follows_the_entropy_dtype(dtype, rounding, bug):
    from vgpo_verl.methods.entropy_shaping import rounding_tolerance

    assert -rounding_tolerance(dtype) < rounding and bug < -rounding_tolerance(dtype)
    mask, adv = torch.ones(2, 3), torch.ones(2, 3)
    shaped = shape_advantages(adv, torch.tensor([[rounding, 0.5, 0.1], [0.2, 0.3, 0.4]], dtype=dtype), mask)
    assert shaped.bonus[0, 0] == 0 and shaped.rounded[0].tolist() == [True, False, False]
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        shape_advantages(adv, torch.tensor([[0.1, 0.5, 0.1], [0.2, bug, 0.4]], dtype=dtype), mask)
    # padding is never judged
    shape_advantages(adv, torch.tensor([[0.1, 0.5, bug], [0.2, 0.3, 0.4]], dtype=dtype), torch.tensor([[1, 1, 0], [1, 1, 1]]))


def _batch(seed=0, prompts=3, n=4, length=10):
    rewards, mask, uid, gen = grouped_outcome_batch(seed, prompts, n, length)
    batch = rewards.shape[0]
    entropy = torch.rand(batch, length, generator=gen) * 2
    return rewards, mask, uid, entropy


def _verl_advantages(rewards, mask, uid, estimator, algo):
    data = DataProto.from_dict(tensors={"token_level_rewards": rewards, "response_mask": mask}, non_tensors={"uid": uid})
    return compute_advantage(data, adv_estimator=estimator, config=algo, norm_adv_by_std_in_grpo=True).batch["advantages"]


def test_registered_in_verl_and_alpha_zero_is_exactly_grpo():
    assert get_adv_estimator_fn("entropy_shaping") is compute_entropy_shaped_advantage
    rewards, mask, uid, entropy = _batch()
    algo = OmegaConf.create({"adv_estimator": "entropy_shaping", "norm_adv_by_std_in_grpo": True, "gamma": 1.0,
                             "lam": 1.0, "entropy_shaping": {"alpha": 0.0}})
    grpo = _verl_advantages(rewards, mask, uid, "grpo", algo)
    with estimator_inputs(entropy=entropy):
        off = _verl_advantages(rewards, mask, uid, "entropy_shaping", algo)
    torch.testing.assert_close(off, grpo, atol=0, rtol=0)
    algo.entropy_shaping.alpha = 0.4
    with estimator_inputs(entropy=entropy):
        on = _verl_advantages(rewards, mask, uid, "entropy_shaping", algo)
    expected = shape_advantages(grpo, entropy, mask, EntropyShapingConfig()).advantages
    torch.testing.assert_close(on, expected, atol=0, rtol=0)
    assert not torch.equal(on, grpo)
    metrics = pop_metrics()
    assert 0 < metrics["entropy/bonus_mean"] and 0 <= metrics["entropy/clip_rate"] <= 1
    assert metrics["entropy/token_entropy_mean"] == pytest.approx(entropy[mask.bool()].mean().item())


def test_missing_entropy_says_what_to_do():
    rewards, mask, uid, _ = _batch()
    with pytest.raises(RuntimeError, match=r"entropy_shaping needs \['entropy'\].*bypass_mode"):
        compute_entropy_shaped_advantage(rewards, mask, uid)


def test_metrics_on_hand_case():
    adv = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    entropy = torch.tensor([[0.5, 2.0], [1.0, 1.0]])
    mask = torch.ones(2, 2)
    shaped = shape_advantages(adv, entropy, mask, EntropyShapingConfig())
    m = entropy_metrics(shaped, adv, entropy, mask)
    assert m["entropy/bonus_mean"] == pytest.approx((0.2 + 0.5) / 4)
    assert m["entropy/nonzero_advantage_fraction"] == pytest.approx(0.5)
    assert m["entropy/bonus_to_abs_advantage"] == pytest.approx(0.7 / 2)


def test_methods_table_lists_every_registered_estimator_of_ours():
    from vgpo_verl.plugin.estimator import ESTIMATORS
    from vgpo_verl.plugin.method_table import ESTIMATOR_NAMES, method_of, methods

    assert set(methods()) == set(ESTIMATOR_NAMES) == set(ESTIMATORS)
    assert method_of("grpo") is None and method_of("entropy_shaping").metric_prefix == "entropy/"
    assert not method_of("entropy_shaping").needs_engine_pass and method_of("vppo").needs_engine_pass
