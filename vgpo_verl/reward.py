"""The reward of the published VGPO/DAPO runs: accuracy of the last ``\\boxed{}`` answer, no format bonus.

verl loads it as a custom reward function (``reward.custom_reward_function.path=pkg://vgpo_verl.reward``,
``name=compute_score``; verl's ``load_module`` imports ``pkg://`` paths as packages) and its reward
manager calls ``compute_score(data_source=, solution_str=, ground_truth=, extra_info=)`` per response.

Grading = math-verify (symbolic/numeric equivalence) after normalising what a human grader ignores:
LaTeX wrappers (``$``, ``\\text{}``, ``\\left``, ``\\dfrac``), degree signs, trailing units, a
thousands separator. Three cases math-verify gets wrong are handled before it:
- multiple-choice letters (``(B)``, ``B.``, ``B: 12``) are compared as letters; with
  ``extra_info["choices"]`` a letter and the text of that choice are interchangeable;
- word answers (``yes``, ``east``) are compared as words (math-verify reads ``no`` as n*o == ``on``);
- a ground truth written as a rounded decimal (``1.73``) accepts a more precise answer that
  rounds to it (``\\sqrt{3}``, ``1.732``), never a less precise one (``1.7``).

math-verify guards sympy with ``signal.alarm``, which only works in the main thread; verl's reward
managers call us from a thread pool. Off the main thread we run without that alarm and instead
refuse to hand sympy inputs that can blow up (very long answers, huge exponents or factorials):
those are compared as normalised strings.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping, Sequence

from math_verify import parse, verify

logger = logging.getLogger(__name__)

# Seconds math-verify may spend parsing / comparing one answer (main thread only, see module doc).
MATH_VERIFY_TIMEOUT_S = 5
# Answers longer than this are never handed to sympy (compared as strings instead).
MAX_SYMPY_CHARS = 400
# Exponents, factorials or digit runs this long can keep sympy busy for minutes.
_SYMPY_BOMB = re.compile(r"\^\s*\{?\s*[\d(]{3,}|\d{3,}\s*!|\d{60,}|\\underbrace|\\overbrace")

_BOXED_OPENERS = ("\\boxed", "\\fbox")


def extract_boxed(text: str | None) -> str | None:
    """Content of the LAST ``\\boxed{...}`` (or ``\\fbox{...}``, ``\\boxed 5``) in ``text``.

    Braces are matched, so ``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``. Returns None when
    there is no box or the last box is never closed (a truncated response).
    """
    if not text:
        return None
    start = max(text.rfind(opener) for opener in _BOXED_OPENERS)
    if start < 0:
        return None
    opener = next(o for o in _BOXED_OPENERS if text.startswith(o, start))
    i = start + len(opener)
    if i < len(text) and text[i] == " ":  # `\boxed 5`: the box holds one token
        token = re.match(r"\s*([^\s$]+)", text[i:])
        return token.group(1) if token else None
    if i >= len(text) or text[i] != "{":
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return None


# ---------------------------------------------------------------------------------------------
# Normalisation: what a human grader does not look at.

_WRAPPER_COMMANDS = ("text", "textbf", "textit", "textrm", "mathrm", "mathbf", "mathit", "mbox", "operatorname", "rm")
_WRAPPER = re.compile(r"\\(?:" + "|".join(_WRAPPER_COMMANDS) + r")\s*\{([^{}]*)\}")
_SPACING = re.compile(r"\\[,;:! ]|\\q?quad|~")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree|\\circ")

# Units a geometry/physics answer may carry. Single letters are units only when written apart
# from the number (`5 m`, `5\text{ m}`): `5m` may be an algebraic answer.
_UNITS_WORDS = {
    "mm", "cm", "dm", "km", "in", "inch", "inches", "ft", "feet", "foot", "yd", "yard", "yards",
    "mi", "mile", "miles", "meter", "meters", "metre", "metres", "centimeter", "centimeters",
    "centimetre", "centimetres", "millimeter", "millimeters", "kilometer", "kilometers",
    "unit", "units", "square", "sq", "sq.", "cubic", "degree", "degrees", "deg", "radian", "radians",
    "rad", "kg", "mg", "lb", "lbs", "pound", "pounds", "oz", "gram", "grams", "sec", "seconds",
    "second", "min", "minute", "minutes", "hr", "hrs", "hour", "hours", "ml", "liter", "liters",
    "litre", "litres", "m/s", "km/h", "mph", "cm/s", "dollars", "dollar", "cents", "cent",
    "yuan", "percent", "people", "students", "times", "days", "day", "years", "year",
}
_UNITS_SEPARATE_ONLY = {"m", "g", "s", "h", "l", "t", "n", "j", "w", "v", "a"}
_POWER_SUFFIX = re.compile(r"(?:\^\s*\{?\s*[23]\s*\}?|[²³])$")


def _unwrap(text: str) -> str:
    previous = None
    while previous != text:  # nested wrappers: \textbf{\text{A}}
        previous = text
        text = _WRAPPER.sub(r" \1 ", text)
    return text


def normalize_answer(answer: str) -> str:
    """A LaTeX answer as a human reads it: no math delimiters, wrappers, spacing, degrees or units."""
    s = answer.strip().replace("−", "-").replace("\u2009", " ")
    s = re.sub(r"^\$+|\$+$", "", s).strip()
    s = re.sub(r"^\\[(\[]|\\[)\]]$", "", s).strip()
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\\left\b|\\right\b|\\displaystyle", "", s)
    s = _DEGREES.sub(" ", s)
    s = s.replace("\\%", "%").replace("\\$", " ")
    s = _unwrap(s)
    s = _SPACING.sub(" ", s)
    s = re.sub(r"\s+", " ", s).strip()
    s = re.sub(r"\s*\^\s*", "^", s)  # `\text{ cm}^2` unwraps to `cm ^2`
    s = _strip_units(s)
    return s.rstrip(".").strip()


def _strip_units(s: str) -> str:
    """Drop trailing unit words after a number: `12 square units` -> `12`, `5 cm^2` -> `5`."""
    m = re.match(r"^(.*?[\d}%)])((?:\s*[A-Za-z][A-Za-z/.]*(?:\^\s*\{?\s*[23]\s*\}?|[²³])?)+)$", s)
    if not m:
        return s
    value, tail = m.group(1), m.group(2)
    words = tail.split()
    if not words:
        return s
    separated = tail[0].isspace()
    for k, word in enumerate(words):
        bare = _POWER_SUFFIX.sub("", word).lower()
        if bare in _UNITS_WORDS:
            continue
        if bare in _UNITS_SEPARATE_ONLY and (separated or k > 0):
            continue
        return s  # a non-unit word: this is an expression, not a quantity with a unit
    return value.strip()


# ---------------------------------------------------------------------------------------------
# Special answer kinds.

_LETTER_ALONE = re.compile(r"^\(?([A-Ha-h])\)?$")
_LETTER_WITH_TEXT = re.compile(r"^(?:\(([A-H])\)|([A-H])[.:)])\s*(.*)$")
_LETTER_NAMED = re.compile(r"^(?:option|choice|answer)\s*:?\s*\(?([A-Ha-h])\)?$", re.IGNORECASE)
_ANOTHER_CHOICE = re.compile(r"\(([A-H])\)|\b(?:and|or)\b", re.IGNORECASE)


def choice_letter(answer: str) -> str | None:
    """`B`, `(b)`, `B.`, `B: 12`, `(B) 12`, `Option B` -> "B"; anything else (incl. `(A) and (C)`) -> None."""
    s = normalize_answer(answer)
    for pattern in (_LETTER_ALONE, _LETTER_NAMED):
        m = pattern.match(s)
        if m:
            return m.group(1).upper()
    m = _LETTER_WITH_TEXT.match(s)
    if m and not _ANOTHER_CHOICE.search(m.group(3)):
        return (m.group(1) or m.group(2)).upper()
    return None


_WORD = re.compile(r"^[A-Za-z][A-Za-z' -]*[A-Za-z]$")


def _is_word(s: str) -> bool:
    return bool(_WORD.match(s))


_DECIMAL = re.compile(r"^-?\d+\.(\d+)$")


def _safe_for_sympy(s: str) -> bool:
    return len(s) <= MAX_SYMPY_CHARS and not _SYMPY_BOMB.search(s)


def _parse(s: str, timeout_s: int | None):
    return parse(f"${s}$", parsing_timeout=timeout_s)


def _math_equal(gold: str, pred: str) -> bool:
    """math-verify equivalence of two normalised answers, plus the rounded-decimal rule."""
    if gold.replace(" ", "") == pred.replace(" ", ""):
        return True
    if not (_safe_for_sympy(gold) and _safe_for_sympy(pred)):
        return False
    timeout_s = MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    gold_parsed, pred_parsed = _parse(gold, timeout_s), _parse(pred, timeout_s)
    if not gold_parsed or not pred_parsed:
        return False
    if verify(gold_parsed, pred_parsed, timeout_seconds=timeout_s):
        return True
    return _matches_rounded_gold(gold, pred_parsed[0])


def _matches_rounded_gold(gold: str, pred_value) -> bool:
    """Gold `1.73` (2 decimals) accepts a prediction that is more precise and rounds to it."""
    m = _DECIMAL.match(gold)
    if not m:
        return False
    places = len(m.group(1))
    try:
        value = float(pred_value.evalf())
    except (AttributeError, TypeError, ValueError):
        return False
    pred_decimal = _DECIMAL.match(str(pred_value)) if pred_value.is_Float else None
    if pred_decimal is not None:
        digits = len(pred_decimal.group(1).rstrip("0"))
        if digits <= places:  # as precise or less: math-verify's answer stands
            return False
    return f"{value:.{places}f}" == f"{float(gold):.{places}f}"


def _choices_by_letter(extra_info: Mapping | None) -> dict[str, str]:
    """extra_info["choices"] as {"A": text, ...}; a list is lettered A, B, C... in order."""
    if not extra_info:
        return {}
    choices = extra_info.get("choices") if isinstance(extra_info, Mapping) else None
    if choices is None:
        return {}
    if isinstance(choices, Mapping):
        return {str(k).strip("() .").upper(): str(v) for k, v in choices.items()}
    if (isinstance(choices, Sequence) and not isinstance(choices, str)) or hasattr(choices, "tolist"):
        items = choices.tolist() if hasattr(choices, "tolist") else list(choices)
        return {chr(ord("A") + i): str(text) for i, text in enumerate(items)}
    raise TypeError(f"extra_info['choices'] must be a list or a mapping, got {type(choices).__name__}")


def grade_answer(answer: str | None, ground_truth: str, choices: Mapping[str, str] | None = None) -> bool:
    """True when ``answer`` (the boxed content) is what a human grader accepts for ``ground_truth``."""
    if answer is None or not str(answer).strip():
        return False
    choices = choices or {}
    gold_letter, pred_letter = choice_letter(ground_truth), choice_letter(answer)
    if gold_letter is not None and gold_letter in choices and pred_letter is None:
        return grade_answer(answer, choices[gold_letter])  # the text of the right choice
    if gold_letter is None and pred_letter is not None and pred_letter in choices:
        return grade_answer(choices[pred_letter], ground_truth)  # the letter of the right text
    if gold_letter is not None or pred_letter is not None:
        return gold_letter == pred_letter
    gold, pred = normalize_answer(ground_truth), normalize_answer(answer)
    if not gold or not pred:
        return False
    if _is_word(gold) or _is_word(pred):
        return gold.lower() == pred.lower()
    return _math_equal(gold, pred)


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **unused_kwargs) -> float:
    """verl custom reward function: 1.0 if the last boxed answer is right, else 0.0 (no format bonus).

    ``ground_truth`` is ``reward_model.ground_truth`` of the parquet row (a string, or a list of
    accepted answers); ``extra_info`` may carry ``choices`` for multiple-choice rows.
    ``unused_kwargs`` absorbs what verl's reward managers add for model-based rewards.
    """
    if ground_truth is None or (isinstance(ground_truth, str) and not ground_truth.strip()):
        raise ValueError(f"compute_score: empty ground_truth for a {data_source!r} sample; fix the dataset row")
    answer = extract_boxed(solution_str)
    if answer is None:
        return 0.0
    golds = [ground_truth] if isinstance(ground_truth, str) else [str(g) for g in ground_truth]
    choices = _choices_by_letter(extra_info)
    return 1.0 if any(grade_answer(answer, gold, choices) for gold in golds) else 0.0
