"""`--mechanism`'s parts that need no training run: its verl overrides, statistics, JSON and plot.

The experiment itself (6 verl runs, over an hour on two cores) is not part of the suite.
"""

import json
import math
import pathlib

import pytest

from vgpo_verl.demo import mechanism as m


def test_the_overrides_compose_into_verl_config_with_seeded_sampling():
    from hydra import compose, initialize_config_module
    from verl.utils.config import omega_conf_to_dataclass

    from vgpo_verl.demo import learn
    from vgpo_verl.demo import run as demo_run
    from vgpo_verl.plugin.rollout_seeds import enabled

    path = pathlib.Path("/nonexistent")
    overrides = learn.merge_overrides(demo_run.overrides(path, path, path, "grpo"), learn.learn_overrides())
    overrides = learn.merge_overrides(overrides, m.mechanism_overrides(2, path / "run"))
    keys = [o.split("=")[0].lstrip("+") for o in overrides]
    assert len(keys) == len(set(keys))
    with initialize_config_module("verl.trainer.config", version_base=None):
        cfg = compose("ppo_trainer", overrides=overrides)
    rollout = omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)
    assert enabled(rollout) and rollout.seed == 2 and cfg.data.seed == 2 and cfg.data.shuffle
    assert cfg.trainer.total_training_steps == m.STEPS and cfg.trainer.save_freq == m.STEPS
    assert list(cfg.actor_rollout_ref.actor.checkpoint.save_contents) == ["hf_model"]
    assert cfg.data.max_response_length == m.MAX_RESPONSE_TOKENS and cfg.algorithm.adv_estimator == "grpo"
    assert cfg.data.max_prompt_length == m.MAX_PROMPT_TOKENS
    assert rollout.max_model_len == m.MAX_PROMPT_TOKENS + m.MAX_RESPONSE_TOKENS


def test_the_describe_prompt_fits_the_mechanism_prompt_length():
    """verl refuses a longer prompt only when the first batch is drawn (truncation='error'), an hour in."""
    from vgpo_verl.demo import shapes_data, tiny_model

    tokenizer = tiny_model._tokenizer()
    text = shapes_data.question(m.TASK)
    before, after = text.split("<image>")  # verl's RLHFDataset: the placeholder becomes an image part
    content = [{"type": "text", "text": before}, {"type": "image"}, {"type": "text", "text": after}]
    ids = tokenizer.apply_chat_template([{"role": "user", "content": content}], chat_template=tiny_model.CHAT_TEMPLATE,
                                        add_generation_prompt=True, tokenize=True, return_dict=False)
    vision = tiny_model._model_config().vision_config  # the shapes images are within its pixel range: not resized
    image_tokens = (shapes_data.IMAGE_SIZE // vision.patch_size // vision.spatial_merge_size) ** 2  # 16
    length = len(ids) - 1 + image_tokens  # the one <|image_pad|> expands to image_tokens
    assert ids.count(tiny_model.IMAGE_PAD_ID) == 1
    assert length == 45  # what verl logged as prompt_length/max in the runs: the count above is verl's
    assert length <= m.MAX_PROMPT_TOKENS


def test_t_quantiles_and_the_detectable_gap():
    assert m.t_quantile(0.975, 2) == pytest.approx(4.303, abs=1e-3)  # the tables' values
    assert m.t_quantile(0.8, 2) == pytest.approx(1.061, abs=1e-3)
    assert m.t_quantile(0.975, 10) == pytest.approx(2.228, abs=1e-3)
    gap = m.detectable_gap([0.6, 0.7, 0.8], [0.5, 0.7, 0.6])  # differences 0.1, 0, 0.2: sd 0.1
    assert gap["differences"] == pytest.approx([0.1, 0.0, 0.2]) and gap["mean"] == pytest.approx(0.1)
    assert gap["ci95_half_width"] == pytest.approx(4.3027 * 0.1 / math.sqrt(3), rel=1e-3)
    assert gap["detectable_gap_80pct_power"] == pytest.approx((4.3027 + 1.0607) * 0.1 / math.sqrt(3), rel=1e-3)


def test_shared_rollouts_are_counted_as_multisets(tmp_path):
    def dump(name, rows):
        path = tmp_path / name
        path.write_text("".join(json.dumps({"gts": g, "output": o, "score": 0.0}) + "\n" for g, o in rows))
        return m.generations(path)

    a = dump("a.jsonl", [("red", "x"), ("red", "x"), ("blue", "y"), ("blue", "z")])
    b = dump("b.jsonl", [("blue", "y"), ("red", "x"), ("blue", "w"), ("green", "x")])  # another order
    assert m.shared_fraction(a, b) == 0.5  # one of the two ("red", "x") and ("blue", "y")
    assert m.shared_fraction(a, a) == 1.0
    assert math.isnan(m.shared_fraction(m.generations(tmp_path / "missing.jsonl"), b))


def test_live_focus_is_read_per_step_from_verl_metrics():
    step = {f"vgpo/focus_by_position/bin_{k}": 0.5 - 0.1 * k for k in range(5)}
    metrics = {0: {"val-core/x/acc/mean@4": 0.3}, 1: step, 2: {**step, "vgpo/focus_by_position/bin_2": 9.0}}
    live = m.live_focus(metrics)
    assert live["step"] == [1, 2] and live["focus_by_position"][1][2] == 9.0
    assert live["focus_by_position"][0] == pytest.approx([0.5, 0.4, 0.3, 0.2, 0.1])
    assert m.live_focus({1: {"critic/score/mean": 0.5}}) == {"step": [], "focus_by_position": []}  # DAPO


def _synthetic_result():
    runs = {arm: {s: {"val_step": [0, 4, 8], "val_acc": [0.25, 0.3 + 0.05 * s, 0.4 + shift]} for s in (0, 1, 2)}
            for arm, shift in (("vgpo", 0.05), ("dapo", 0.0))}
    analysis = {"warm_start": {"focus_by_position": [0.5, 0.4, 0.35, 0.3, 0.2], "late_early_ratio": 0.55}}
    for arm in ("vgpo", "dapo"):
        for s in (0, 1, 2):
            analysis[f"{arm}_seed{s}"] = {"focus_by_position": [0.5, 0.45, 0.4, 0.35, 0.3 + 0.01 * s],
                                          "late_early_ratio": 0.7 + 0.01 * s}
    settings = {"steps": 8, "batch_prompts": 8, "responses_per_prompt": 8, "machine": "test CPU, 2 cores",
                "command": m.COMMAND}
    return m.build_result(runs, analysis, settings)


def test_the_result_has_the_issue_schema_and_plots(tmp_path):
    result = _synthetic_result()
    assert set(result) == {"seeds", "arms", "warm_start", "settings"} and result["seeds"] == [0, 1, 2]
    assert set(result["arms"]) == {"vgpo", "dapo"}
    for arm in result["arms"].values():
        assert set(arm) == {"val_step", "val_acc", "late_early_ratio", "focus_by_position"}
        assert arm["val_step"] == [0, 4, 8] and len(arm["val_acc"]) == 3 and all(len(v) == 3 for v in arm["val_acc"])
        assert len(arm["late_early_ratio"]) == 3 and all(len(f) == 5 for f in arm["focus_by_position"])
    assert result["arms"]["vgpo"]["val_acc"][2] == pytest.approx([0.25, 0.4, 0.45])
    assert result["warm_start"] == {"late_early_ratio": 0.55, "focus_by_position": [0.5, 0.4, 0.35, 0.3, 0.2]}

    text = m.report(result)
    assert "vgpo: final validation accuracy 0.450 +- " in text and "seed 2: accuracy 0.250 0.400 0.450" in text

    m.plot(result, tmp_path / "plot.png")
    from PIL import Image

    with Image.open(tmp_path / "plot.png") as image:
        assert image.format == "PNG" and image.size[0] > image.size[1] > 300


def test_runs_that_validated_at_different_steps_are_an_error():
    runs = {"vgpo": {0: {"val_step": [0, 4], "val_acc": [0.2, 0.3]}, 1: {"val_step": [0], "val_acc": [0.2]}}}
    with pytest.raises(RuntimeError, match=r"vgpo: the seeds validated at different steps"):
        m.build_result(runs, {}, {})
