"""vgpo_verl.plugin.dump: off by default; when on, one file per step with what verl stored for the update.

Runs verl's own (wrapped) v1 trainer methods over the in-memory TransferQueue of
test_trainer_wiring; the end-to-end check of a real run is in test_demo.py (fidelity tests).
"""

import pytest
import torch
from test_trainer_wiring import HAS_VISUAL, PROMPT_LENS, RESPONSE_LENS, UIDS, run_steps, v1  # noqa: F401

from vgpo_verl.methods.vgpo import VGPOConfig
from vgpo_verl.plugin.dump import dump_dir_from


def test_dump_dir_is_accepted_next_to_the_knobs_and_off_by_default():
    from omegaconf import OmegaConf

    assert VGPOConfig.from_mapping({"dump_dir": "/tmp/x", "beta": 0.5}).beta == 0.5
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['dump_dirr'\].*dump_dir"):
        VGPOConfig.from_mapping({"dump_dirr": "/tmp/x"})
    assert dump_dir_from(OmegaConf.create({"adv_estimator": "vgpo"})) is None
    assert dump_dir_from(OmegaConf.create({"vgpo": {"dump_dir": ""}})) is None
    assert str(dump_dir_from(OmegaConf.create({"vgpo": {"dump_dir": "/tmp/d"}}))) == "/tmp/d"


def test_no_dump_without_dump_dir(v1, tmp_path, monkeypatch):  # noqa: F811
    make_trainer, batch, _ = v1
    monkeypatch.chdir(tmp_path)
    run_steps(make_trainer("vgpo"), batch)
    assert not list(tmp_path.rglob("*.pt"))


def test_dump_holds_what_verl_stored_and_recomputes(v1, tmp_path):  # noqa: F811
    make_trainer, batch, tq = v1
    trainer = make_trainer("vgpo")
    trainer.config.algorithm.vgpo = {"dump_dir": str(tmp_path / "dump")}
    trainer.global_steps = 3
    batch, _ = run_steps(trainer, batch)

    record = torch.load(tmp_path / "dump" / "step_000003.pt", weights_only=False)
    width = max(RESPONSE_LENS)
    assert record["step"] == 3 and record["uid"] == UIDS and record["keys"] == list(batch.keys)
    assert record["response_mask"].shape == record["similarity"].shape == record["advantages"].shape == (4, width)
    assert record["response_mask"].sum(1).tolist() == RESPONSE_LENS
    assert record["prompt_length"].tolist() == PROMPT_LENS
    assert record["has_visual"].tolist() == HAS_VISUAL and not record["is_padding"].any()
    stored = torch.nested.to_padded_tensor(tq.kv_batch_get(batch.keys, "train", ["advantages"])["advantages"], 0.0)
    torch.testing.assert_close(record["advantages"], stored, atol=0, rtol=0)
    old = torch.nested.to_padded_tensor(tq.kv_batch_get(batch.keys, "train", ["old_log_probs"])["old_log_probs"], 0.0)
    torch.testing.assert_close(record["old_log_probs"], old.float(), atol=0, rtol=0)  # the actor's, a weights probe

    # the scores are the ones the estimator received (the fixture's keys put both rows of a uid in one
    # multi-output session, so its stored advantages are 0; the recomputation is checked on a real run)
    from vgpo_verl.plugin.method_table import method_of
    from vgpo_verl.plugin.trainer_wiring import fetch_v1_inputs

    inputs = fetch_v1_inputs(method_of("vgpo"), batch)
    torch.testing.assert_close(record["similarity"], inputs["visual_similarity"], atol=0, rtol=0)
    assert record["has_visual"].tolist() == inputs["has_visual"].tolist()
    assert set(record["estimator_inputs"]) == {"visual_similarity", "has_visual"}
    assert record["algorithm"]["adv_estimator"] == "vgpo"


def test_summary_shows_advantages_vgpo_and_rollout_corr_per_step(tmp_path):
    from vgpo_verl.demo.summary import render_summary

    step = {"critic/score/mean": 0.5, "critic/advantages/max": 1.2, "critic/advantages/min": -0.9,
            "vgpo/no_visual_fraction": 0.0, "vgpo/psi_max": 1.5, "rollout_corr/k3_kl": 1e-6}
    text, complete = render_summary({1: step, 2: dict(step), 3: {"val-core/x/acc/mean@1": 0.5}}, steps=2,
                                    estimator="vgpo", exit_code=0, wall_s=60, peak_memory_bytes=2**30, run_dir=tmp_path)
    assert complete, text
    block = text.split("step 1:")[1].split("step 2:")[0]
    for key in step:
        if key != "vgpo/no_visual_fraction":
            assert key in block, (key, block)
    assert "+1.2" in block and "-0.9" in block and "+1e-06" in block


def test_learn_overrides_replace_the_demo_ones_and_curves_start_at_the_warm_start():
    from vgpo_verl.demo.learn import curve, learn_overrides, merge_overrides

    merged = merge_overrides(["a=1", "+b.c=2", "d=3"], ["b.c=5", "a=2"])
    assert merged == ["d=3", "b.c=5", "a=2"]
    keys = [o.split("=")[0] for o in learn_overrides()]
    assert len(keys) == len(set(keys)) and "actor_rollout_ref.actor.clip_ratio_high" in keys
    metrics = {0: {"val-core/vgpo_shapes/acc/mean@1": 0.4}, 1: {"critic/score/mean": 0.3},
               2: {"critic/score/mean": 0.5, "val-core/vgpo_shapes/acc/mean@1": 0.6, "val-aux/x/acc/std@1": 9}}
    assert curve(metrics) == {"step": [0, 2], "val_acc": [0.4, 0.6], "train_step": [1, 2], "train_reward": [0.3, 0.5]}


def test_colour_task_answers_are_plain_words_that_both_graders_accept():
    import random

    from vgpo_verl.demo.shapes_data import COLOURS, example
    from vgpo_verl.demo.warm_start import answer_text
    from vgpo_verl.reward import compute_score

    first = [example("colour", random.Random(s))[1] for s in range(20)]
    assert first == [example("colour", random.Random(s))[1] for s in range(20)]  # deterministic
    assert set(first) <= set(COLOURS) and len(set(first)) > 1
    for answer in COLOURS:
        assert compute_score("vgpo_shapes", answer_text(answer), answer) == 1.0
        assert compute_score("vgpo_shapes", answer_text("red" if answer != "red" else "blue"), answer) == 0.0
    with pytest.raises(ValueError, match="unknown shapes task 'size'"):
        example("size", random.Random(0))
