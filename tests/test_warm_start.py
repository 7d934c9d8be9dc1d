"""The warm start's building blocks that need no training: the answer token it hedges, the task's shapes."""

import random

import pytest


@pytest.mark.parametrize("task, answers", [("colour", 4), ("count", 5)])
def test_the_answers_differ_in_exactly_one_response_token(task, answers):
    from vgpo_verl.demo.tiny_model import _tokenizer
    from vgpo_verl.demo.warm_start import _answer_tokens, _response_length

    tokenizer = _tokenizer()
    at, ids = _answer_tokens(tokenizer, task)
    assert ids.shape == (answers,) and len(set(ids.tolist())) == answers  # one distinct token per answer
    # `\boxed{` before it, `}<|im_end|>` after it: the hedged token is the answer itself
    assert 0 < at < _response_length(tokenizer, task) - 1
    assert tokenizer.decode([int(ids[0])]) in {"blue", "green", "orange", "red", "0"}


def test_colour_shapes_are_large_enough_for_the_tiny_vision_tower():
    from vgpo_verl.demo.shapes_data import COLOUR_RADIUS, example

    radii = [example("colour", random.Random(seed))[2][0]["r"] for seed in range(50)]
    assert min(radii) >= COLOUR_RADIUS[0] and max(radii) <= COLOUR_RADIUS[1] and COLOUR_RADIUS[0] >= 30
    assert len(set(radii)) > 5
