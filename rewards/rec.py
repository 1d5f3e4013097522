"""Referring expression comprehension rewards: format, continuous IoU and accuracy at 0.5.

The answer is the first ``<answer>...</answer>`` of the completion and the box is the first
``[x1, y1, x2, y2]`` of non-negative integers in it (VLM-R1's rules). The ground truth is the
row's solution text, ``"[x1, y1, x2, y2]"`` in original-image pixels. Each ``*_detail``
function returns ``(value, failure)`` where ``failure`` names a parse failure or is None.
"""
from __future__ import annotations

from . import parse
from .boxes import iou, maybe_rescale


def solution_box(solution: str) -> list[float] | None:
    """The ground-truth box from a REC solution (JSON list, optionally inside <answer> tags)."""
    text = parse.first_answer(solution) if parse.ANSWER_OPEN in solution else solution.strip()
    data = parse.loads(text)
    if isinstance(data, dict):  # {"bbox_2d": [...]} style solutions
        data = data.get("bbox_2d")
    box = parse.coords4(data)
    if box is None:
        m = parse.first_int_box(text)
        box = [float(v) for v in m] if m else None
    return box


def rec_iou_detail(completion: str, solution: str, **info):
    """IoU of the first answer box with the ground truth, rescaled to original pixels."""
    gt = solution_box(solution)
    if gt is None:
        return 0.0, "bad_solution"
    answer = parse.first_answer(completion)
    if answer is None:
        return 0.0, "no_answer"
    box = parse.first_int_box(answer)
    if box is None:
        return 0.0, "no_box"
    box = maybe_rescale(box, info)
    return iou(box, gt, info.get("box_convention", "vlm_r1")), None


def rec_acc_detail(completion: str, solution: str, **info):
    """1.0 when the IoU of ``rec_iou`` exceeds 0.5 (VLM-R1's evaluation criterion), else 0.0."""
    value, failure = rec_iou_detail(completion, solution, **info)
    return (1.0 if value > 0.5 else 0.0), failure


def rec_format_detail(completion: str, solution: str = "", **info):
    """1.0 when the completion thinks, then answers with a JSON object holding a 4-integer box."""
    ok = parse.has_rec_format(completion)
    return (1.0 if ok else 0.0), (None if ok else "bad_format")


def format_detail(completion: str, solution: str = "", **info):
    """1.0 when the whole completion is ``<think>...</think>`` then ``<answer>...</answer>``."""
    ok = parse.has_think_answer_format(completion)
    return (1.0 if ok else 0.0), (None if ok else "bad_format")
