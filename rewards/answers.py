"""Accuracy rewards for answers that are not boxes: VLM-R1's ``accu_reward_method`` values
``default``, ``mcq``, ``yes_no``, ``math``, ``numeric`` and ``all_match``, plus ``fuzzy``.

The student's answer is the completion's ``<answer>...</answer>`` (VLM-R1 takes the last one for
``default`` / ``numeric`` / ``math`` / ``all_match`` and the first for ``mcq`` / ``yes_no``; so do
these), or the whole completion when there is none. The ground truth is the row's solution, or the
``<answer>`` inside it. Every function returns ``(value, failure)``.

Deliberate differences from VLM-R1 (each found by comparing on generated cases):
- ``math`` and the first check of ``default`` use ``math_equal`` below (numbers, fractions,
  percentages, thousands separators, ``\\boxed{}``, ``$...$``, ``x = ...``; other expressions
  compare as normalised text) instead of ``math_verify``'s sympy parser, which has no time bound
  on adversarial text. Answers that need algebra to match (``2\\sqrt{2}`` vs ``\\sqrt{8}``) score 0.
- ``mcq`` reads the solution's option letter inside its ``<answer>``. VLM-R1 looks in the wrapped
  solution ``<answer> B </answer>``, where a bare letter is followed by a space and is never found,
  so against a bare-letter solution every answer scored 0 there.
- ``llm`` (an LLM judge) is not offered: a data row naming it is a counted skip.
- Texts are cut at ``MAX_CHARS`` before matching: bounded time whatever the model writes.
"""
from __future__ import annotations

import math
import re

from . import parse
from .mathcheck import CHECKER

MAX_CHARS = 20_000
_SPACE = re.compile(r"\s+")
# an uppercase letter, not after another one, followed by punctuation or the end (VLM-R1's rule)
_CHOICE = re.compile(r"(?<![A-Z])([A-Z])(?=[.,?!:;]|$)")
_KEYWORDS = ("答案", "选择", "正确", "是", "对", "answer", "correct", "choose", "select", "right",
             "认为", "应该", "觉得", "think", "believe", "should")


def _answer(text: str, last: bool = True) -> str:
    text = text[:MAX_CHARS]
    inner = parse.last_answer(text) if last else parse.first_answer(text)
    return (inner if inner is not None else text).strip()


def ground_truth(solution: str) -> str:
    """The ground truth of a row: its solution, or the ``<answer>`` inside it."""
    return _answer(solution, last=False)


def clean(text: str) -> str:
    """VLM-R1's ``clean_text``: the last answer, newlines to spaces (dropped after a space),
    stripped, trailing periods removed, lower case.

    >>> clean("<think>x</think><answer> The Red\\nCircle. </answer>")
    'the red circle'
    """
    text = _answer(text)
    text = re.sub(r"(?<=\s)[\n\r]", "", text)
    text = re.sub(r"(?<!\s)[\n\r]", " ", text)
    return text.strip().rstrip(".").lower()


def extract_choice(text: str) -> str | None:
    """The option letter an answer picks (VLM-R1's heuristic): capital letters standing alone before
    punctuation or the end; with several, the one with the most points (a keyword within 20
    characters, in the last 30% of the text, followed by punctuation), the first on a tie.

    >>> extract_choice("B."), extract_choice("I think the answer is C."), extract_choice("none")
    ('B', 'C', None)
    """
    text = _SPACE.sub(" ", text[:MAX_CHARS])
    choices = _CHOICE.findall(text)
    if not choices:
        return None
    if len(choices) == 1:
        return choices[0]
    scores: dict[str, int] = {}
    for c in choices:  # a repeated letter is scored again from its first position, as in VLM-R1
        pos = text.find(c)
        context = text[max(0, pos - 20):pos + 20]
        s = sum(1 for k in _KEYWORDS if k.upper() in context)
        s += 2 if pos > len(text) * 0.7 else 0
        s += 1 if pos < len(text) - 1 and text[pos + 1] in "。.!！,，" else 0
        scores[c] = s
    return max(scores.items(), key=lambda kv: kv[1])[0]


def ratio(a: str, b: str) -> float:
    """Normalised indel similarity, ``1 - (insertions + deletions) / (len(a) + len(b))`` (what
    ``Levenshtein.ratio`` computes), from the longest common subsequence found bit-parallel
    (Allison-Dix), so that long texts cost ``len(b)`` big-integer steps.

    >>> ratio("kitten", "sitting"), ratio("", ""), ratio("abc", "")
    (0.6153846153846154, 1.0, 0.0)
    """
    a, b = a[:MAX_CHARS], b[:MAX_CHARS]
    if not a and not b:
        return 1.0
    if not a or not b:
        return 0.0
    masks: dict[str, int] = {}
    for i, ch in enumerate(a):
        masks[ch] = masks.get(ch, 0) | (1 << i)
    full = (1 << len(a)) - 1
    row = full
    for ch in b:
        u = row & masks.get(ch, 0)
        row = ((row + u) | (row - u)) & full
    lcs = len(a) - bin(row).count("1")
    return 2 * lcs / (len(a) + len(b))


def _number(text: str) -> float | None:
    """A plain number as Python's ``float`` reads it (VLM-R1's ``numeric_reward``), else None."""
    try:
        return float(text)
    except (ValueError, OverflowError):
        return None


_BOXED = re.compile(r"\\boxed\{([^{}]*(?:\{[^{}]*\}[^{}]*)*)\}")
_FRAC = re.compile(r"^\\d?frac\{([^{}]+)\}\{([^{}]+)\}$")


def _math_form(text: str) -> str:
    """Normalised text of a math answer: ``\\boxed{}`` contents, no ``$``, spaces, ``\\left`` /
    ``\\right``, thousands commas or a trailing period; the right side of ``x = ...``."""
    boxed = _BOXED.findall(text)
    t = boxed[-1] if boxed else text
    t = t.replace("$", "").replace("\\left", "").replace("\\right", "").replace("\\!", "").replace("\\,", "")
    t = _SPACE.sub("", t).rstrip(".")
    if t.count("=") == 1:
        t = t.split("=", 1)[1]
    if re.fullmatch(r"[-+]?\d{1,3}(,\d{3})+(\.\d+)?", t):
        t = t.replace(",", "")
    return t


def _math_value(t: str) -> float | None:
    """The value of a normalised answer that is a number, a fraction or a percentage."""
    if t.endswith("\\%") or t.endswith("%"):
        v = _math_value(t[:-2] if t.endswith("\\%") else t[:-1])
        return None if v is None else v / 100
    m = _FRAC.match(t)
    if m:
        num, den = _math_value(m.group(1)), _math_value(m.group(2))
        return num / den if num is not None and den not in (None, 0) else None
    if re.fullmatch(r"[-+]?\d+/\d+", t):
        num, den = t.split("/")
        return int(num) / int(den) if int(den) else None
    if re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", t):
        return float(t)
    return None


def math_equal(answer: str, truth: str) -> bool:
    """Whether two math answers are equal: as numbers (relative tolerance 1e-6) when both read
    as one, else as normalised text.

    >>> math_equal("\\\\boxed{\\\\frac{1}{2}}", "0.5"), math_equal("x = 1,000", "1000"), math_equal("50%", "0.5")
    (True, True, True)
    """
    a, t = _math_form(answer[:MAX_CHARS]), _math_form(truth[:MAX_CHARS])
    va, vt = _math_value(a), _math_value(t)
    if va is not None and vt is not None:
        return math.isclose(va, vt, rel_tol=1e-6, abs_tol=1e-12)
    return bool(a) and a.lower() == t.lower()


# ---------------------------------------------------------------------------- the rewards
def mcq_detail(completion: str, solution: str, **info):
    """1.0 when the answer's option letter is the solution's (``extract_choice`` on both)."""
    truth = ground_truth(solution)
    correct = (extract_choice(truth) or truth).upper()
    picked = extract_choice(_answer(completion, last=False))
    if picked is None:
        return 0.0, "no_choice"
    return (1.0 if picked == correct else 0.0), None


def yes_no_detail(completion: str, solution: str, **info):
    """1.0 when the first ``yes`` / ``no`` in the answer is the solution's (VLM-R1: both absent
    also counts as a match)."""
    def first(text):
        m = re.search(r"(yes|no)", text.lower())
        return m.group(1) if m else ""
    got = first(_answer(completion, last=False))
    return (1.0 if got == first(ground_truth(solution)) else 0.0), (None if got else "no_yes_no")


def numeric_detail(completion: str, solution: str, **info):
    """1.0 when answer and solution read as the same number (``float``, exact), else 0.0."""
    a, t = _number(clean(completion)), _number(clean(solution))
    if a is None or t is None:
        return 0.0, ("bad_solution" if t is None else "not_a_number")
    return (1.0 if a == t else 0.0), None


def math_detail(completion: str, solution: str, **info):
    """1.0 when ``math_equal`` holds for the cleaned answer and solution."""
    return (1.0 if math_equal(clean(completion), clean(solution)) else 0.0), None


def math_verify_detail(completion: str, solution: str, timeout_s: float = 5.0, **info):
    """1.0 when ``math-verify`` reads the last answer and the solution as equal expressions
    (VLM-R1's symbolic check: ``verify(parse(solution), parse(answer))``; a bare LaTeX answer is
    read as ``$...$``), in a child process that gets ``timeout_s`` seconds per answer (``timeout``:
    scored 0); see ``rewards.mathcheck``."""
    equal, failure = CHECKER.equal(_answer(completion)[:MAX_CHARS], ground_truth(solution)[:MAX_CHARS], timeout_s)
    return (1.0 if equal else 0.0), failure


def all_match_detail(completion: str, solution: str, **info):
    """1.0 when the cleaned answer equals the cleaned solution exactly (VLM-R1's GUI task)."""
    return (1.0 if clean(completion) == clean(solution) else 0.0), None


def fuzzy_detail(completion: str, solution: str, **info):
    """``ratio`` of the cleaned answer and solution: 1.0 identical, 0.0 nothing in common."""
    return ratio(clean(completion), clean(solution)), None


def default_detail(completion: str, solution: str, **info):
    """VLM-R1's default accuracy: 1.0 when ``math_equal`` holds; else, with digits in the solution,
    ``numeric`` (``fuzzy`` when either is not a number); with an option letter, ``mcq``; else
    ``fuzzy``."""
    answer, truth = _answer(completion), ground_truth(solution)
    if math_equal(answer, truth):
        return 1.0, None
    if re.search(r"\d", truth):
        a, t = _number(clean(answer)), _number(clean(truth))
        if a is not None and t is not None:
            return (1.0 if a == t else 0.0), None
        return ratio(clean(answer), clean(truth)), None
    choice = extract_choice(truth)
    if choice:
        picked = extract_choice(answer)
        return (1.0 if picked == choice.upper() else 0.0), (None if picked else "no_choice")
    return ratio(clean(answer), clean(truth)), None
