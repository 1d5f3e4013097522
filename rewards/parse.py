"""Linear-time extraction of answers, boxes and JSON from free model text.

VLM-R1 parses completions with regexes such as ``<answer>(.*?)</answer>`` and
``<think>.*?</think>\\s*<answer>.*?\\{.*\\[...\\].*\\}.*?</answer>``. On adversarial text
(thousands of unclosed tags) those are quadratic or worse. The functions here return exactly
what the VLM-R1 regexes return, but scan with ``str.find`` so that every call is linear in the
length of the completion. Nothing here raises on any string.
"""
from __future__ import annotations

import json
import math
import re

ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
FENCE_JSON, FENCE = "```json", "```"

# VLM-R1's REC box pattern. Safe to run as a regex: it can only start at "[", and a match
# cannot contain another "[", so the work per start is bounded by the digit run after it.
BOX_PATTERN = re.compile(r"\[(\d+),\s*(\d+),\s*(\d+),\s*(\d+)\]")
# Python refuses int() of more than 4300 digits; coordinates longer than this are garbage
# anyway (their IoU with any real box is below 1e-30), so they count as a parse failure.
MAX_DIGITS = 30


def find_all_between(text: str, start: str, end: str) -> list[str]:
    """All non-overlapping ``start(.*?)end`` bodies, as ``re.findall`` with DOTALL returns them.

    >>> find_all_between("<a>1</a> <a>2</a>", "<a>", "</a>")
    ['1', '2']
    """
    out, pos = [], 0
    while True:
        i = text.find(start, pos)
        if i < 0:
            return out
        j = text.find(end, i + len(start))
        if j < 0:  # no later start can close either
            return out
        out.append(text[i + len(start):j])
        pos = j + len(end)


def first_between(text: str, start: str, end: str) -> str | None:
    """The first ``start(.*?)end`` body (``re.search`` semantics), or None."""
    i = text.find(start)
    if i < 0:
        return None
    j = text.find(end, i + len(start))
    return None if j < 0 else text[i + len(start):j]


def last_between(text: str, start: str, end: str) -> str | None:
    """The last body of ``re.findall(start(.*?)end)``, or None (VLM-R1's OVD answer rule)."""
    found = find_all_between(text, start, end)
    return found[-1] if found else None


def first_answer(text: str) -> str | None:
    """Stripped body of the first ``<answer>...</answer>`` (VLM-R1's REC rule)."""
    body = first_between(text, ANSWER_OPEN, ANSWER_CLOSE)
    return None if body is None else body.strip()


def last_answer(text: str) -> str | None:
    """Stripped body of the last ``<answer>...</answer>`` (VLM-R1's OVD rule)."""
    body = last_between(text, ANSWER_OPEN, ANSWER_CLOSE)
    return None if body is None else body.strip()


def _skip_space(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i].isspace():  # str.isspace is exactly re's \s for str patterns
        i += 1
    return i


def _think_then_answer(text: str, start: int = 0) -> int:
    """Index just after the first ``</think>\\s*<answer>`` preceded by a ``<think>``, or -1."""
    i = text.find(THINK_OPEN, start)
    if i < 0:
        return -1
    j = text.find(THINK_CLOSE, i + len(THINK_OPEN))
    while j >= 0:
        k = _skip_space(text, j + len(THINK_CLOSE))
        if text.startswith(ANSWER_OPEN, k):
            return k + len(ANSWER_OPEN)
        j = text.find(THINK_CLOSE, j + 1)
    return -1


def has_think_answer_format(text: str) -> bool:
    """``re.fullmatch(r"<think>.*?</think>\\s*<answer>.*?</answer>", text, re.DOTALL)``, linear.

    >>> has_think_answer_format("<think>x</think> <answer>y</answer>")
    True
    >>> has_think_answer_format("<think>x</think><answer>y</answer> trailing")
    False
    """
    if not (text.startswith(THINK_OPEN) and text.endswith(ANSWER_CLOSE)):
        return False
    end_limit = len(text) - len(ANSWER_CLOSE)  # the closing tag is the string's last 9 chars
    j = text.find(THINK_CLOSE, len(THINK_OPEN))
    while 0 <= j:
        k = _skip_space(text, j + len(THINK_CLOSE))
        if text.startswith(ANSWER_OPEN, k) and k + len(ANSWER_OPEN) <= end_limit:
            return True
        j = text.find(THINK_CLOSE, j + 1)
    return False


def has_rec_format(text: str) -> bool:
    """VLM-R1's REC format regex (``re.search``, DOTALL), decided in linear time.

    Pattern: ``<think>.*?</think>\\s*<answer>.*?\\{.*\\[\\d+,\\s*\\d+,\\s*\\d+,\\s*\\d+\\].*\\}.*?</answer>``.
    Taking the earliest position for every piece is optimal because each later piece only
    needs to start after the previous one ends, and box matches never overlap.

    >>> has_rec_format('<think>a</think><answer>{"bbox_2d": [1, 2, 3, 4]}</answer>')
    True
    >>> has_rec_format('<think>a</think><answer>[1, 2, 3, 4]</answer>')
    False
    """
    e = _think_then_answer(text)
    if e < 0:
        return False
    p = text.find("{", e)
    if p < 0:
        return False
    box = BOX_PATTERN.search(text, p + 1)
    if box is None:
        return False
    r = text.find("}", box.end())
    return r >= 0 and text.find(ANSWER_CLOSE, r + 1) >= 0


def first_int_box(text: str) -> list[int] | None:
    """First ``[d, d, d, d]`` of non-negative integers (VLM-R1's REC box), or None."""
    m = BOX_PATTERN.search(text)
    if m is None or any(len(g) > MAX_DIGITS for g in m.groups()):
        return None
    return [int(g) for g in m.groups()]


def loads(text: str):
    """``json.loads`` that returns a sentinel instead of raising (deep nesting, huge ints...)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError, MemoryError):
        return _FAILED


class _Failed:
    def __repr__(self) -> str:
        return "<json parse failure>"


_FAILED = _Failed()
PARSE_FAILED = _FAILED


def as_number(x) -> float | None:
    """A finite float from a JSON number; None for bools, strings, NaN/inf or anything else."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    try:
        v = float(x)
    except OverflowError:  # ints beyond float range
        return None
    return v if math.isfinite(v) else None


def coords4(box) -> list[float] | None:
    """First four coordinates of a JSON box as finite floats, else None (too short, wrong types)."""
    if not isinstance(box, (list, tuple)) or len(box) < 4:
        return None
    out = []
    for v in box[:4]:
        t = type(v)
        if t is float:
            if not math.isfinite(v):
                return None
        elif t is int:
            try:
                v = float(v)
            except OverflowError:
                return None
        else:
            v = as_number(v)  # subclasses and everything else: the careful path
            if v is None:
                return None
        out.append(v)
    return out


def parse_json_list_lenient(text: str) -> list | None:
    """A JSON list, or the complete leading items of a truncated one (for answers cut off by
    ``max_new_tokens``). Linear: items are decoded one by one with ``raw_decode``."""
    data = loads(text)
    if data is not _FAILED:
        return data if isinstance(data, list) else None
    i = text.find("[")
    if i < 0:
        return None
    dec, items, pos, n = json.JSONDecoder(), [], i + 1, len(text)
    while pos < n:
        pos = _skip_space(text, pos)
        try:
            item, pos = dec.raw_decode(text, pos)
        except (ValueError, RecursionError):
            break
        items.append(item)
        pos = _skip_space(text, pos)
        if pos < n and text[pos] == ",":
            pos += 1
        else:
            break
    return items or None
