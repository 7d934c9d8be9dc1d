"""The boxed-answer reward (vgpo_verl.reward): extraction, a table of tricky answer pairs, and verl loading it."""

import threading

import pytest

from vgpo_verl import reward
from vgpo_verl.reward import choice_letter, compute_score, extract_boxed, grade_answer

# (ground truth, boxed answer): a human grader accepts these.
SHOULD_MATCH = [
    ("0.5", r"\frac{1}{2}"),
    (r"\frac{1}{2}", "0.5"),
    (r"\frac{1}{2}", r"\dfrac{2}{4}"),
    ("1.5", r"1\frac{1}{2}"),
    (r"\frac{3}{4}", "3/4"),
    ("4", "4.0"),
    ("0.5", "0.50"),
    ("-3", "−3"),
    ("1000", "1,000"),
    ("30", r"30^\circ"),
    (r"30^{\circ}", "30"),
    ("30°", "30"),
    ("45", "45 degrees"),
    ("5", r"5\text{ cm}"),
    ("5", "5 cm"),
    ("12", r"12 \text{ cm}^2"),
    ("12", "12 square units"),
    ("7", r"7\,\mathrm{m}"),
    (r"5\text{ m/s}", "5"),
    ("6", r"6\%"),
    ("8", r"\mathbf{8}"),
    ("8", r"\text{8}"),
    ("8", "$8$"),
    (r"\frac{\sqrt{2}}{2}", r"\sqrt{2}/2"),
    (r"2\sqrt{3}", r"\sqrt{12}"),
    (r"4\sqrt{3}", r"4 \sqrt 3"),
    ("2", "x=2"),
    ("(1,2)", r"\left( 1, 2 \right)"),
    (r"\{1,2\}", r"\{2,1\}"),
    ("x^2+2x+1", "(x+1)^2"),
    ("1.73", r"\sqrt{3}"),
    ("3.14", r"\pi"),
    ("12.5", "12.49"),
    ("yes", r"\text{Yes}"),
    ("East", "east"),
    ("A", "A"),
    ("A", "(A)"),
    ("B", r"\text{B}"),
    ("C", "C. 12"),
    ("(D)", "D"),
    ("B", "Option B"),
    ("b", "B"),
]

# (ground truth, boxed answer): a human grader rejects these.
SHOULD_NOT_MATCH = [
    ("2", "-2"),
    ("10", "100"),
    ("5", "5 and 6"),
    ("2", "2 or 3"),
    ("3", "3, 4"),
    ("(3,4)", "(4,3)"),
    ("(1,2)", "[1,2]"),
    (r"\frac{1}{3}", "0.33"),
    ("2", "2.0001"),
    ("100", "99.9999"),
    ("1.7", "1.8"),
    ("1.73", "1.7"),
    ("12.5", "12.4"),
    (r"3\pi", "9.42"),
    ("30", r"60^\circ"),
    ("12", "12x"),
    ("5", "5y"),
    (r"\sqrt{3}", "3"),
    ("no", "on"),
    ("yes", "no"),
    ("east", "west"),
    ("A", "B"),
    ("A", "(A) and (C)"),
    ("C", "A. 12"),
    ("A", "12"),
    ("12", "A"),
    ("x^2", "x^3"),
    (r"\{1,2\}", r"\{1,2,3\}"),
]


@pytest.mark.parametrize("gold, pred", SHOULD_MATCH)
def test_should_match(gold, pred):
    assert grade_answer(pred, gold), f"{pred!r} should be accepted for {gold!r}"
    assert compute_score("test", rf"<think>work</think> so \boxed{{{pred}}}", gold) == 1.0


@pytest.mark.parametrize("gold, pred", SHOULD_NOT_MATCH)
def test_should_not_match(gold, pred):
    assert not grade_answer(pred, gold), f"{pred!r} should be rejected for {gold!r}"
    assert compute_score("test", rf"\boxed{{{pred}}}", gold) == 0.0


def test_table_is_large_enough():
    assert len(SHOULD_MATCH) + len(SHOULD_NOT_MATCH) >= 40
    assert len(SHOULD_MATCH) >= 20 and len(SHOULD_NOT_MATCH) >= 20


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"\boxed{5}", "5"),
        (r"a \boxed{1} then \boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
        (r"\boxed{x^{2}+\sqrt{y}}.", r"x^{2}+\sqrt{y}"),
        (r"\boxed 7$", "7"),
        (r"\fbox{C}", "C"),
        (r"<think>\boxed{3}</think> final: \boxed{4}", "4"),
        (r"answer \boxed{12", None),  # truncated response: the box never closes
        ("no box at all: 12", None),
        ("", None),
        (None, None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


def test_last_box_decides():
    assert compute_score("x", r"\boxed{3} no wait \boxed{4}", "4") == 1.0
    assert compute_score("x", r"\boxed{4} no wait \boxed{3}", "4") == 0.0


def test_no_box_scores_zero_and_no_format_bonus():
    assert compute_score("x", "<think>it is 4</think> The answer is 4.", "4") == 0.0
    # A right answer without <think> still gets the full reward: no format term in the published reward.
    assert compute_score("x", r"\boxed{4}", "4") == 1.0


def test_choices_map_letters_and_texts():
    choices = ["3", r"\frac{1}{2}", "7"]  # A, B, C
    assert compute_score("mc", r"\boxed{0.5}", "B", {"choices": choices}) == 1.0
    assert compute_score("mc", r"\boxed{7}", "B", {"choices": choices}) == 0.0
    assert compute_score("mc", r"\boxed{(B)}", "1/2", {"choices": choices}) == 1.0
    assert compute_score("mc", r"\boxed{C}", "1/2", {"choices": {"A": "3", "B": "1/2", "C": "7"}}) == 0.0
    # Without choices a letter never equals a value.
    assert compute_score("mc", r"\boxed{0.5}", "B") == 0.0


def test_list_of_accepted_answers():
    assert compute_score("x", r"\boxed{6}", ["5", "6"]) == 1.0
    assert compute_score("x", r"\boxed{7}", ["5", "6"]) == 0.0


def test_choice_letter():
    assert choice_letter("(c)") == "C"
    assert choice_letter(r"\textbf{D}") == "D"
    assert choice_letter("B: 12 cm") == "B"
    assert choice_letter("12") is None
    assert choice_letter("apple") is None


def test_empty_ground_truth_is_an_error_naming_the_source():
    with pytest.raises(ValueError, match="mmk12"):
        compute_score("mmk12", r"\boxed{1}", "  ")


def test_bad_choices_type_is_an_error():
    with pytest.raises(TypeError, match="choices"):
        compute_score("mc", r"\boxed{A}", "A", {"choices": 3})


def test_works_off_the_main_thread():
    """verl's reward managers call compute_score from a thread pool, where signal.alarm is unavailable."""
    results = []
    worker = threading.Thread(target=lambda: results.append(compute_score("x", r"\boxed{\dfrac{1}{2}}", "0.5")))
    worker.start()
    worker.join(60)
    assert results == [1.0]


def test_sympy_bombs_are_not_parsed_off_the_main_thread():
    results = []
    worker = threading.Thread(target=lambda: results.append(compute_score("x", r"\boxed{9^{9^{9^{999}}}}", "3")))
    worker.start()
    worker.join(60)
    assert results == [0.0]
    assert not reward._safe_for_sympy("9^{999}")


def test_verl_loads_it_as_custom_reward_function():
    """The recipes point verl at `pkg://vgpo_verl.reward`; verl's own loader must find compute_score there."""
    from omegaconf import OmegaConf

    from verl.trainer.ppo.reward import get_custom_reward_fn

    config = OmegaConf.create(
        {"reward": {"custom_reward_function": {"path": "pkg://vgpo_verl.reward", "name": "compute_score"}}}
    )
    fn = get_custom_reward_fn(config)
    assert fn(data_source="geo3k", solution_str=r"\boxed{30^\circ}", ground_truth="30", extra_info={}) == 1.0
    assert fn(data_source="geo3k", solution_str=r"\boxed{31}", ground_truth="30", extra_info={}) == 0.0
