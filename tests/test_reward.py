"""The graders (vgpo_verl.data.grading) and the verl reward function: equal to the authors' library calls.

The references below are direct compositions of mathruler and math-verify, written the way the
authors' files call them (VGPO's examples/reward_function/math.py ``compute_score_wo_format``, batch
of ``reward_inputs`` dicts in, ``overall`` out; Look-Back's eval/cal_score.py ``accuracy_reward``).
Hypothesis draws responses and ground truths from fragments of the answer shapes these datasets hold
(numbers, fractions, LaTeX, units, choice letters, multi-letter answers, words, tags with stray
spaces, missing / nested / truncated boxes), and the graders must give the references' value on each.
"""

import re
import string
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from math_verify import parse, verify
from mathruler.grader import extract_boxed_content, grade_answer

from vgpo_verl.data import grading
from vgpo_verl.reward import compute_score


def authors_compute_score_wo_format(reward_inputs: list[dict]) -> list[dict]:
    """VGPO's reward, composed as their examples/reward_function/math.py does."""
    scores = []
    for reward_input in reward_inputs:
        response = re.sub(r"\s*(<|>|/)\s*", r"\1", reward_input["response"])
        accuracy = 1.0 if grade_answer(extract_boxed_content(response), reward_input["ground_truth"]) else 0.0
        scores.append({"overall": accuracy, "accuracy": accuracy})
    return scores


def lookback_accuracy_reward(predict: str, ground_truth: str) -> float:
    """Look-Back's eval/cal_score.py accuracy_reward, composed of the same three library calls."""
    answer = extract_boxed_content(predict)
    if grade_answer(answer, ground_truth):
        return 1.0
    if float(verify(parse(answer), parse(ground_truth))) > 0:
        return 1.0
    if len(ground_truth) == 1 and ground_truth in string.ascii_uppercase and ground_truth.upper() in answer.upper():
        return 1.0
    return 0.0


# Answer fragments of the shapes the training and benchmark sets hold.
ANSWER_FRAGMENTS = [
    "3", "12", "-2", "0.5", "1.73", "1.732", "1,000", "4.0", r"\frac{1}{2}", r"\dfrac{2}{4}", "1/2", r"\sqrt{3}",
    r"2\sqrt{3}", r"\pi", r"4\pi", "30", r"30^\circ", "30°", r"60^{\circ}", "5 cm", r"5\text{ cm}", r"12 \text{ cm}^2",
    "x=2", "(1,2)", r"\{1,2\}", "[1,2]", "x^2+2x+1", "(x+1)^2", "A", "B", "C", "E", "N", "(B)", "B.", "C. 12",
    "A, C", "AC", "A,C", "Option B", "yes", "No", "east", "Rectangles", "30 minutes", r"\text{B}", r"\mathbf{8}",
    "$8$", "6%", r"6\%", "None", "", "  7 ",
]
GOLD_FRAGMENTS = [f for f in ANSWER_FRAGMENTS if f.strip()]


@st.composite
def responses(draw):
    """A model response: reasoning (maybe with stray spaces in tags), then zero, one or two boxes."""
    think = draw(st.sampled_from(["<think>work</think>", "< think >work< / think >", "", "<think>\\boxed{9}</think>"]))
    first = draw(st.sampled_from(ANSWER_FRAGMENTS))
    last = draw(st.sampled_from(ANSWER_FRAGMENTS))
    shape = draw(st.sampled_from(["one box", "two boxes", "no box", "truncated", "nested", "text then box"]))
    body = {
        "one box": f" The answer is \\boxed{{{last}}}.",
        "two boxes": f" \\boxed{{{first}}} no wait \\boxed{{{last}}}",
        "no box": f" The answer is {last}.",
        "truncated": f" so \\boxed{{{last}",
        "nested": f" \\boxed{{\\text{{{last}}}}}",
        "text then box": f" {first} / {last} \\boxed{{{last}}} <end>",
    }[shape]
    return think + body


FAST = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(response=responses(), gold=st.sampled_from(GOLD_FRAGMENTS))
def test_vgpo_grader_is_the_authors_reward(response, gold):
    (expected,) = authors_compute_score_wo_format([{"response": response, "ground_truth": gold}])
    assert grading.score(response, gold, "vgpo") == expected["overall"]
    assert compute_score("any", response, gold, {}) == expected["overall"]  # the verl reward's default


@FAST
@given(response=responses(), gold=st.sampled_from(GOLD_FRAGMENTS))
def test_lookback_grader_is_lookbacks_accuracy_reward(response, gold):
    assert grading.score(response, gold, "lookback") == lookback_accuracy_reward(response, gold)


@settings(max_examples=150, deadline=None)
@given(response=st.text(max_size=40).map(lambda t: f"{t} \\boxed{{{t}}}"), gold=st.text(min_size=1, max_size=8))
def test_graders_match_on_arbitrary_text(response, gold):
    (expected,) = authors_compute_score_wo_format([{"response": response, "ground_truth": gold}])
    assert grading.score(response, gold, "vgpo") == expected["overall"]
    assert grading.score(response, gold, "lookback") == lookback_accuracy_reward(response, gold)


def test_every_answer_against_every_letter_gold():
    """Look-Back's letter rule and mathruler's letter handling on every fragment (hypothesis draws these
    pairs too rarely to be sure of each): boxed, and without a box."""
    letters = [gold for gold in GOLD_FRAGMENTS if len(gold.strip()) <= 3 and gold.strip("(). ").isalpha()]
    for answer in ANSWER_FRAGMENTS:
        for response in (f"<think>work</think> \\boxed{{{answer}}}", f"the answer is {answer}"):
            for gold in letters:
                (expected,) = authors_compute_score_wo_format([{"response": response, "ground_truth": gold}])
                assert grading.score(response, gold, "vgpo") == expected["overall"], (response, gold)
                assert grading.score(response, gold, "lookback") == lookback_accuracy_reward(response, gold), (
                    response, gold)


def test_the_property_tests_can_fail():
    """The two graders differ on answers the fragments produce, so a grader swap would be caught."""
    differing = [(r"\boxed{A, C}", "C"), (r"no box", "E"), (r"\boxed{0.5}", "1/2")]
    assert any(grading.score(r, g, "vgpo") != grading.score(r, g, "lookback") for r, g in differing)
    # The tag-space stripping is in the vgpo grader only: `< / think >` text inside the box changes.
    spaced = r"\boxed{1 / 2}"
    assert grading.score(spaced, "1/2", "vgpo") == 1.0


@pytest.mark.parametrize(
    "response, gold, vgpo_score, lookback_score",
    [
        (r"<think>x</think> \boxed{\frac{1}{2}}", "0.5", 1.0, 1.0),
        (r"\boxed{C. 12}", "C", 0.0, 1.0),  # only Look-Back finds the letter in the box
        (r"\boxed{A, C}", "AC", 0.0, 0.0),  # LogicVista-style multi-letter: neither accepts the other spelling
        ("no box at all: E", "E", 0.0, 1.0),  # Look-Back grades the string "None", which holds an E
        (r"\boxed{1.732}", "1.73", 0.0, 0.0),
    ],
)
def test_documented_behaviours(response, gold, vgpo_score, lookback_score):
    """What the module doc promises, pinned on a few cases (the property tests cover the rest)."""
    assert grading.score(response, gold, "vgpo") == vgpo_score
    assert grading.score(response, gold, "lookback") == lookback_score


def test_unknown_grader_and_bad_types_are_errors():
    with pytest.raises(ValueError, match="unknown grader 'lenient'.*lookback.*vgpo"):
        grading.score(r"\boxed{1}", "1", "lenient")
    with pytest.raises(TypeError, match="ground_truth list"):
        grading.score(r"\boxed{1}", ["1"], "vgpo")


def test_empty_ground_truth_is_an_error_naming_the_source():
    with pytest.raises(ValueError, match="mmk12"):
        compute_score("mmk12", r"\boxed{1}", "  ")


def test_grader_is_a_reward_kwarg():
    assert compute_score("x", r"\boxed{C. 12}", "C") == 0.0
    assert compute_score("x", r"\boxed{C. 12}", "C", grader="lookback") == 1.0


def test_lookback_works_off_the_main_thread():
    """verl's reward managers call compute_score from a thread pool, where signal.alarm is unavailable."""
    results = []
    worker = threading.Thread(target=lambda: results.append(
        [grading.score(r"\boxed{\frac{1}{2}}", "0.5", "lookback"), grading.score(r"\boxed{x}", "y", "lookback")]))
    worker.start()
    worker.join(60)
    assert results == [[1.0, 0.0]]


def test_boxed_answer():
    assert grading.boxed_answer(r"a \boxed{1} then \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert grading.boxed_answer("no box: 12") is None
    assert grading.boxed_answer(r"cut \boxed{12") == "None"  # what the graders read


def test_verl_loads_it_as_custom_reward_function():
    """The recipes point verl at `pkg://vgpo_verl.reward`; verl's own loader must find compute_score there."""
    from omegaconf import OmegaConf

    from verl.trainer.ppo.reward import get_custom_reward_fn

    config = OmegaConf.create(
        {"reward": {"custom_reward_function": {"path": "pkg://vgpo_verl.reward", "name": "compute_score",
                                               "reward_kwargs": {"grader": "lookback"}}}}
    )
    fn = get_custom_reward_fn(config)
    assert fn(data_source="geo3k", solution_str=r"\boxed{C. 5}", ground_truth="C", extra_info={}) == 1.0
    assert fn(data_source="geo3k", solution_str=r"\boxed{31}", ground_truth="30", extra_info={}) == 0.0


@pytest.mark.parametrize("task", ["colour", "count"])
def test_the_demo_answers_grade(tmp_path, task):
    """The CPU demo's shapes tasks train on compute_score: their answers (colour words, integer counts)
    grade right and wrong."""
    import pyarrow.parquet as pq

    from vgpo_verl.demo.shapes_data import make_dataset

    train, _ = make_dataset(tmp_path, n_train=16, n_val=2, task=task)
    golds = {row["reward_model"]["ground_truth"] for row in pq.read_table(train).to_pylist()}
    assert len(golds) > 1
    for gold in golds:
        wrong = next(g for g in golds if g != gold)
        assert compute_score("vgpo_shapes", f"<think>I look.</think> \\boxed{{{gold}}}", gold) == 1.0
        assert compute_score("vgpo_shapes", f"\\boxed{{{wrong}}}", gold) == 0.0
        assert compute_score("vgpo_shapes", f"The answer is {gold}.", gold) == 0.0  # no box, no reward
