"""The warm start's building blocks that need no training: the answer token it hedges, the task's shapes."""

import random

import pytest


@pytest.mark.parametrize("task, answers", [("colour", 4), ("count", 5), ("describe", 4)])
def test_the_answers_differ_in_exactly_one_response_token(task, answers):
    from vgpo_verl.demo.tiny_model import _tokenizer
    from vgpo_verl.demo.warm_start import _answer_tokens, _response_length

    tokenizer = _tokenizer()
    at, ids = _answer_tokens(tokenizer, task)
    assert ids.shape == (answers,) and len(set(ids.tolist())) == answers  # one distinct token per answer
    # `\boxed{` before it, `}<|im_end|>` after it: the hedged token is the answer itself
    assert 0 < at < _response_length(tokenizer, task) - 1
    assert tokenizer.decode([int(ids[0])]) in {"blue", "green", "orange", "red", "0"}


def test_describe_reasons_for_over_30_tokens_then_answers_what_the_reward_grades():
    from vgpo_verl.demo.shapes_data import example, reference_response
    from vgpo_verl.demo.tiny_model import _tokenizer
    from vgpo_verl.demo.warm_start import _answer_tokens, _description_tokens, _response_length
    from vgpo_verl.reward import compute_score

    tokenizer = _tokenizer()
    at, _ = _answer_tokens(tokenizer, "describe")
    described = _description_tokens(tokenizer, "describe")
    assert at >= 30 and at == _response_length(tokenizer, "describe") - 3  # then `}.` and <|im_end|>
    # the shape's kind, three times, is the rest of what depends on the image
    assert described.sum() == 3 and not described[at] and described[:10].any()
    assert not _description_tokens(tokenizer, "colour").any()
    for seed in range(8):
        _, answer, shapes = example("describe", random.Random(seed))
        text = reference_response("describe", answer, shapes)
        assert shapes[0]["kind"] in text and answer not in text.split("\\boxed")[0]  # the colour only at the end
        assert compute_score("vgpo_shapes", text, answer) == 1.0
        assert compute_score("vgpo_shapes", reference_response("describe", "red" if answer != "red" else "blue", shapes),
                             answer) == 0.0


def test_colour_shapes_are_large_enough_for_the_tiny_vision_tower():
    from vgpo_verl.demo.shapes_data import COLOUR_RADIUS, example

    radii = [example("colour", random.Random(seed))[2][0]["r"] for seed in range(50)]
    assert min(radii) >= COLOUR_RADIUS[0] and max(radii) <= COLOUR_RADIUS[1] and COLOUR_RADIUS[0] >= 30
    assert len(set(radii)) > 5


def _cached(path, info: dict):
    import json

    from vgpo_verl.demo.warm_start import INFO_FILE

    path.mkdir(parents=True)
    (path / INFO_FILE).write_text(json.dumps(info))
    return path


def test_a_cached_warm_start_is_reused_only_under_the_same_recipe(tmp_path, monkeypatch):
    import json

    from vgpo_verl.demo import warm_start

    builds = []

    def fake_build(cmd, check):  # what the child process would leave: a checkpoint and its info
        out = warm_start.pathlib.Path(cmd[4])
        (out / warm_start.INFO_FILE).write_text(json.dumps({**warm_start.recipe(), "built": True}))
        builds.append(cmd)

    monkeypatch.setattr(warm_start.subprocess, "run", fake_build)
    same = _cached(tmp_path / "same", {**warm_start.recipe(), "heldout_accuracy": 0.45})
    assert warm_start.build_warm_start(tmp_path / "base", same) == same and builds == []

    # an older release's checkpoint: stopped at 40 % greedy accuracy, small shapes, no hedging
    old = _cached(tmp_path / "old", {"task": "colour", "seed": 0, "steps": 215, "batch": 16, "lr": 2e-3,
                                     "train_examples": 1024, "heldout_examples": 128})
    assert warm_start.build_warm_start(tmp_path / "base", old) == old and len(builds) == 1
    assert json.loads((old / warm_start.INFO_FILE).read_text())["built"]
    assert not list(tmp_path.glob("old.*"))  # no temporary build left beside it


def test_the_describe_warm_start_continues_the_colour_one(tmp_path):
    from vgpo_verl.demo import warm_start

    assert warm_start.recipe(0, "describe")["starts_from"] == warm_start.recipe(0, "colour")
    warm_start._check_base(_cached(tmp_path / "colour", warm_start.recipe(0, "colour")), 0, "describe")
    with pytest.raises(ValueError, match=r"the describe warm start continues the colour warm start \(seed 0\)"):
        warm_start._check_base(tmp_path / "tiny_model", 0, "describe")
    with pytest.raises(ValueError, match="not one made under its current recipe"):  # another seed's
        warm_start._check_base(_cached(tmp_path / "colour1", warm_start.recipe(1, "colour")), 0, "describe")
