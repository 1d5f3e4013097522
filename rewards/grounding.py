"""Grounding rewards the peers train with, beside VLM-R1's: GIoU, thresholded IoU, one-to-one
matched precision / recall / F1, a box-count penalty, and explicit scoring of ``None``.

Parsing follows VLM-R1's rules exactly as ``rewards.rec`` (REC: first answer, first integer box)
and ``rewards.ovd`` (OVD: last answer, last fenced json list) do, so a completion means the same
thing to every reward. Numeric parameters (``iou_threshold``, ``base``) are keyword arguments
with defaults; ``reward.params`` in the config sets them per reward, and a schedule may change
them during a run. Every ``*_detail`` returns ``(value, failure)``.

Absent targets: an OVD solution ``None`` means nothing of the asked categories is in the image.
Answering ``None`` there is exactly right (1.0 for precision, recall, F1 and the count penalty);
any box there is a false alarm (0.0). Answering ``None`` when there are targets recalls nothing
(0.0). VLM-R1's own mAP rewards agree on these cases; these rewards also state them.
"""
from __future__ import annotations

from . import ovd, parse
from .boxes import iou, maybe_rescale
from .rec import solution_box


def giou(a, b) -> float:
    """Generalised IoU of two boxes (continuous convention), in [-1, 1]: IoU minus the share of the
    smallest enclosing box that neither box covers. Unlike IoU it still ranks boxes that do not
    overlap, by how far apart they are.

    >>> giou([0, 0, 10, 10], [0, 0, 10, 10])
    1.0
    >>> giou([0, 0, 10, 10], [20, 0, 30, 10])   # IoU 0; hull 30 x 10, union 200: 0 - 100/300
    -0.3333333333333333
    """
    inter_w = min(a[2], b[2]) - max(a[0], b[0])
    inter_h = min(a[3], b[3]) - max(a[1], b[1])
    inter = inter_w * inter_h if (inter_w > 0 and inter_h > 0) else 0.0
    area = lambda z: max(0.0, z[2] - z[0]) * max(0.0, z[3] - z[1])  # noqa: E731
    union = area(a) + area(b) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    if not (union > 0 and hull > 0):
        return -1.0
    return max(-1.0, min(1.0, inter / union - (hull - union) / hull))


def _rec_box(completion: str, solution: str, info: dict):
    """(predicted box in original pixels, ground-truth box, failure) with rec_iou's parsing."""
    gt = solution_box(solution)
    if gt is None:
        return None, None, "bad_solution"
    answer = parse.first_answer(completion)
    if answer is None:
        return None, gt, "no_answer"
    box = parse.first_int_box(answer)
    if box is None:
        return None, gt, "no_box"
    return maybe_rescale(box, info), gt, None


def rec_giou_detail(completion: str, solution: str, **info):
    """``(1 + GIoU) / 2`` of the first answer box with the ground truth, in [0, 1]: 1 for the exact
    box, 0.5 for a box touching it, towards 0 as it moves away; 0 when there is no box (so an
    unparsable answer never outscores a wrong box)."""
    box, gt, failure = _rec_box(completion, solution, info)
    if box is None:
        return 0.0, failure
    return (1.0 + giou(box, gt)) / 2.0, None


def rec_iou_thresh_detail(completion: str, solution: str, iou_threshold: float = 0.5, **info):
    """The IoU of ``rec_iou`` where it reaches ``iou_threshold``, else 0 (V-Triune's thresholded
    IoU: a loose box earns nothing, so boxes cannot drift while keeping their reward; V-Triune
    raises the threshold 0.85 -> 0.95 -> 0.99 during training)."""
    box, gt, failure = _rec_box(completion, solution, info)
    if box is None:
        return 0.0, failure
    value = iou(box, gt, info.get("box_convention", "vlm_r1"))
    return (value if value >= iou_threshold else 0.0), None


def max_matching(edges: list[list[int]], n_right: int) -> int:
    """Size of a maximum one-to-one matching in a bipartite graph (``edges[i]``: the right-hand
    nodes left node ``i`` may pair with), by augmenting paths. It does not depend on the order of
    either side, which is what makes the rewards below independent of prediction order.

    >>> max_matching([[0, 1], [0]], 2)   # greedy 0-0 would block 1; augmenting finds 0-1, 1-0
    2
    """
    owner = [-1] * n_right

    def augment(i: int, seen: list[bool]) -> bool:
        for j in edges[i]:
            if not seen[j]:
                seen[j] = True
                if owner[j] < 0 or augment(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    return sum(augment(i, [False] * n_right) for i in range(len(edges)))


# A completion cannot be trusted to be short: at most this many predicted boxes are matched (the
# rest still count as false alarms), which bounds the matching at 200 x n_gt pairs.
MAX_MATCHED_PREDICTIONS = 200


def _claims(items: list, info: dict) -> list[tuple[list, str]]:
    """(box in original pixels, label) of the first ``MAX_MATCHED_PREDICTIONS`` items that have a
    4-number box and a string label."""
    out = []
    for it in items[:MAX_MATCHED_PREDICTIONS]:
        box = parse.coords4(it.get("bbox_2d")) if isinstance(it, dict) else None
        label = it.get("label") if isinstance(it, dict) else None
        if box is not None and isinstance(label, str):
            out.append((maybe_rescale(box, info), label))
    return out


def _ovd_counts(completion: str, solution: str, iou_threshold: float, info: dict):
    """(true positives, claimed items, ground truths, failure) for an OVD answer.

    Every item of the answer's list is a claim; it is a true positive when it has a 4-number box
    and a string label and is matched one-to-one to a ground-truth box of the same label with IoU
    >= ``iou_threshold`` (continuous convention, as COCO's), the matching chosen to pair as many as
    possible. Answering ``None`` claims nothing."""
    answer, gts, items, failure = ovd._pred(completion, solution)
    if answer is None:
        return 0, 0, len(gts), failure
    preds = _claims(items, info)
    gt_boxes = [(parse.coords4(g["bbox_2d"]), g["label"]) for g in gts]
    edges = [[j for j, (gb, gl) in enumerate(gt_boxes) if gl == pl and iou(pb, gb, "continuous") >= iou_threshold]
             for pb, pl in preds]
    return max_matching(edges, len(gt_boxes)), len(items), len(gt_boxes), failure


def _pr(completion, solution, iou_threshold, info):
    tp, n_claims, n_gt, failure = _ovd_counts(completion, solution, iou_threshold, info)
    if n_gt == 0:  # nothing to find: right only for a clean "None" (or an empty list)
        return ((1.0, 1.0) if n_claims == 0 and failure is None else (0.0, 0.0)), failure
    return ((tp / n_claims if n_claims else 0.0), tp / n_gt), failure


def ovd_precision_detail(completion: str, solution: str, iou_threshold: float = 0.5, **info):
    """Share of predicted boxes matched one-to-one to a same-label ground truth at
    ``iou_threshold``; 1.0 for ``None`` (or an empty list) when the image has no target."""
    (p, _), failure = _pr(completion, solution, iou_threshold, info)
    return p, failure


def ovd_recall_detail(completion: str, solution: str, iou_threshold: float = 0.5, **info):
    """Share of ground-truth boxes found (one-to-one, same label, IoU >= ``iou_threshold``); 1.0
    for ``None`` (or an empty list) when the image has no target."""
    (_, r), failure = _pr(completion, solution, iou_threshold, info)
    return r, failure


def ovd_f1_detail(completion: str, solution: str, iou_threshold: float = 0.5, **info):
    """Harmonic mean of ``ovd_precision`` and ``ovd_recall``: padding with extra boxes lowers
    precision and dropping boxes lowers recall, so neither hack pays."""
    (p, r), failure = _pr(completion, solution, iou_threshold, info)
    return (2 * p * r / (p + r) if p + r > 0 else 0.0), failure


def ovd_count_detail(completion: str, solution: str, base: float = 0.6, **info):
    """``base ** |n_pred - n_gt|`` (V-Triune's size penalty, base 0.6): 1 for the right number of
    boxes, whatever their positions; a multiplier-like term to add beside a localisation reward.
    ``None`` counts as zero boxes; an unparsable answer scores 0."""
    answer, gts, items, failure = ovd._pred(completion, solution)
    if answer is None or failure == "bad_json":
        return 0.0, failure
    n_pred = sum(1 for it in items if isinstance(it, dict) and parse.coords4(it.get("bbox_2d")) is not None)
    return float(base) ** abs(n_pred - len(gts)), failure


def _ovd_soft(completion: str, solution: str, info: dict, measure):
    """Dense OVD localisation: predicted and ground-truth boxes of the same label are paired
    one-to-one, greedily by ``measure`` (a pair score in [0, 1]), and the pairs' scores are summed
    and divided by ``max(n_claims, n_gt)``: a box a little closer scores a little more (unlike mAP,
    which pays nothing below IoU 0.5), an extra box dilutes the sum (no padding), a missing one
    scores 0. ``None`` where nothing is asked for scores 1, any claim there 0."""
    answer, gts, items, failure = ovd._pred(completion, solution)
    if answer is None:
        return 0.0, failure
    if not gts:
        return (1.0 if not items and failure is None else 0.0), failure
    preds = _claims(items, info)
    pairs = sorted(((measure(pb, parse.coords4(g["bbox_2d"])), i, j) for i, (pb, pl) in enumerate(preds)
                    for j, g in enumerate(gts) if g["label"] == pl), reverse=True)
    used_p, used_g, total = set(), set(), 0.0
    for value, i, j in pairs:
        if i not in used_p and j not in used_g:
            used_p.add(i)
            used_g.add(j)
            total += value
    return total / max(len(items), len(gts)), failure


def ovd_iou_detail(completion: str, solution: str, **info):
    """OVD's counterpart of ``rec_iou``: the summed IoU of same-label (prediction, ground truth)
    pairs matched one-to-one, over ``max(n_pred, n_gt)``; 1.0 for ``None`` when nothing is there.

    >>> box = lambda b, lab: f'{{"bbox_2d": {b}, "label": "{lab}"}}'
    >>> gt = '```json\\n[' + box([0, 0, 10, 10], 'cat') + ']\\n```'
    >>> ovd_iou_detail('<answer>```json\\n[' + box([0, 0, 10, 20], 'cat') + ']\\n```</answer>', gt)
    (0.5, None)
    """
    return _ovd_soft(completion, solution, info, lambda a, b: iou(a, b, "continuous"))


def ovd_giou_detail(completion: str, solution: str, **info):
    """As ``ovd_iou`` with ``(1 + GIoU) / 2`` per pair, so a box that misses its target still
    scores by how near it is (0.5 touching, towards 0 far away)."""
    return _ovd_soft(completion, solution, info, lambda a, b: (1.0 + giou(a, b)) / 2.0)
