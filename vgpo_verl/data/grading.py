"""Answer graders of the VGPO paper's protocol: one response + one ground truth -> 1.0 or 0.0.

Both graders are compositions of the same libraries the authors called, not imitations of them, so
they agree with the authors' code on every answer by construction:

``"vgpo"``  the training reward of the published runs: ``compute_score_wo_format`` in the VGPO
            authors' ``examples/reward_function/math.py`` (github wzb-bupt/VGPO, the
            ``REWARD_FUNCTION`` of their ``train_vgpo_7B.sh``). Spaces around ``<``, ``>`` and ``/``
            are removed from the response, then mathruler's ``extract_boxed_content`` takes the last
            ``\\boxed{}`` and mathruler's ``grade_answer`` compares it with the ground truth.
            No format term. Pure Python + sympy without signals: safe in verl's reward threads.
``"lookback"`` the evaluation scorer: ``accuracy_reward`` in Look-Back's ``eval/cal_score.py``
            (github PKU-YuanGroup/Look-Back), which the paper's numbers come from. mathruler's
            ``grade_answer`` on the boxed answer; else math-verify ``verify(parse(answer),
            parse(ground_truth))`` (arguments in their order: the prediction in the gold slot);
            else, for a one-capital-letter ground truth, that letter anywhere in the boxed answer
            (case-insensitive). No space stripping. Two consequences of their code, kept on purpose:
            a response without a box is graded as the text ``"None"`` (what mathruler returns), so
            a gold letter ``N``, ``O`` or ``E`` scores 1.0 without any box; and ``C`` is found in
            ``"A, C"``.

math-verify times its sympy work out with ``signal.alarm``, which exists only on the main thread.
There ``"lookback"`` runs with math-verify's default timeouts, exactly as Look-Back's script did;
off the main thread (verl's reward thread pool) the timeouts are off, which changes a result only
where a 5-second timeout would have fired.
"""

from __future__ import annotations

import re
import string
import threading
from collections.abc import Callable

from math_verify import parse, verify
from mathruler.grader import extract_boxed_content, grade_answer

# compute_score_wo_format: "handle qwen2.5vl-32b format" (`< / think >` and the like).
_SPACES_AROUND_TAG_CHARS = re.compile(r"\s*(<|>|/)\s*")


def vgpo(response: str, ground_truth: str) -> float:
    """The VGPO authors' training reward (``compute_score_wo_format``, see the module doc)."""
    response = _SPACES_AROUND_TAG_CHARS.sub(r"\1", response)
    return 1.0 if grade_answer(extract_boxed_content(response), ground_truth) else 0.0


def lookback(response: str, ground_truth: str) -> float:
    """Look-Back's ``accuracy_reward`` (the paper's evaluation scorer, see the module doc)."""
    answer = extract_boxed_content(response)
    if grade_answer(answer, ground_truth):
        return 1.0
    if threading.current_thread() is threading.main_thread():
        equivalent = verify(parse(answer), parse(ground_truth))
    else:
        equivalent = verify(parse(answer, parsing_timeout=None), parse(ground_truth, parsing_timeout=None),
                            timeout_seconds=None)
    if float(equivalent) > 0:
        return 1.0
    if len(ground_truth) == 1 and ground_truth in string.ascii_uppercase and ground_truth.upper() in answer.upper():
        return 1.0
    return 0.0


GRADERS: dict[str, Callable[[str, str], float]] = {"vgpo": vgpo, "lookback": lookback}


def score(response: str, ground_truth: str, grader: str) -> float:
    """1.0 if ``response`` answers ``ground_truth`` by ``grader`` ("vgpo" or "lookback"), else 0.0."""
    try:
        grade = GRADERS[grader]
    except KeyError:
        raise ValueError(f"unknown grader {grader!r}; the graders are {sorted(GRADERS)}") from None
    if not isinstance(response, str) or not isinstance(ground_truth, str):
        raise TypeError(f"score needs two strings, got response {type(response).__name__} and ground_truth "
                        f"{type(ground_truth).__name__} ({ground_truth!r})")
    return grade(response, ground_truth)


def boxed_answer(response: str) -> str | None:
    """What both graders read as the answer (mathruler's last ``\\boxed{}``); None when there is no box.

    A box that never closes (a truncated response) reads as ``"None"``, as the graders see it.
    """
    return extract_boxed_content(response) if "\\boxed{" in response else None
