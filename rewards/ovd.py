"""Open-vocabulary detection rewards: COCO mAP / AP50, odLength, weighted sum, repetition.

The prediction is the last ``<answer>...</answer>`` of the completion; its boxes are the last
fenced ```json list inside it, each item ``{"bbox_2d": [x1, y1, x2, y2], "label": str}``
(VLM-R1's rules). The ground truth is the row's solution: the same fenced list, or ``None``.
Every ``*_detail`` function returns ``(value, failure)``, ``failure`` naming a parse failure.

Deliberate differences from VLM-R1, all on inputs VLM-R1 would crash on or mis-score:
non-finite coordinates (``NaN``/``Infinity`` are valid Python JSON) drop the item, a ground
truth whose every box is ignored by COCO gives 0 instead of -1, and the repetition penalty
recovers the complete leading items of a truncated list where VLM-R1 calls ``json_repair``.
"""
from __future__ import annotations

import re

from . import parse
from .boxes import iou, maybe_rescale
from .coco_ap import coco_ap

_NONE = "None"


def _fenced_json(text: str, last: bool = True):
    """JSON of the last (or first) ```json fenced block, PARSE_FAILED, or None if no block.

    VLM-R1's non-greedy block ends at the first ``` after ```json, so a label holding ``` cuts it
    short and fails to parse; then the span up to the last ``` is tried too (a superset of what
    VLM-R1 reads: whatever it parses is parsed the same).

    >>> _fenced_json('```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "a ``` b"}]\n```')
    [{'bbox_2d': [1, 2, 3, 4], 'label': 'a ``` b'}]
    """
    blocks = parse.find_all_between(text, parse.FENCE_JSON, parse.FENCE)
    if not blocks:
        return None
    data = parse.loads((blocks[-1] if last else blocks[0]).strip())
    if data is parse.PARSE_FAILED:
        i, j = text.find(parse.FENCE_JSON) + len(parse.FENCE_JSON), text.rfind(parse.FENCE)
        whole = parse.loads(text[i:j].strip()) if j > i else parse.PARSE_FAILED
        if whole is not parse.PARSE_FAILED:
            return whole
    return data


def _as_items(data) -> list:
    """``[item for item in data]`` as VLM-R1 does: lists stay, dicts give keys, scalars give []."""
    if data is None or data is parse.PARSE_FAILED:
        return []
    if isinstance(data, (list, dict, str)):
        return list(data)
    return []


def _gt_text(solution: str) -> str:
    """The ground-truth answer text: the solution, or its last <answer> body if tagged."""
    if parse.ANSWER_OPEN in solution:
        return parse.last_answer(solution) or ""
    return solution.strip()


def gt_items(solution: str) -> list[dict]:
    """Ground-truth items of an OVD solution: fenced json list, bare json list, or ``None``."""
    text = _gt_text(solution)
    if text == _NONE:
        return []
    data = _fenced_json(text)
    if data is None:  # leniency for user data written without fences
        data = parse.loads(text)
    items = data if isinstance(data, list) else []
    return [it for it in items if isinstance(it, dict) and parse.coords4(it.get("bbox_2d"))
            is not None and isinstance(it.get("label"), str)]


def _pred(completion: str, solution: str):
    """(answer, gt items, raw predicted items, failure) following VLM-R1's map_reward."""
    answer = parse.last_answer(completion)
    gts = gt_items(solution)
    if answer is None:
        return None, gts, [], "no_answer"
    data = _fenced_json(answer)
    failure = None
    if data is parse.PARSE_FAILED:
        failure = "bad_json"
    elif data is None and answer != _NONE:
        failure = "no_json"
    return answer, gts, _as_items(data), failure


def _valid_preds(items: list, gts: list[dict], info: dict):
    """Predictions COCOeval would keep: known label, 4 finite coordinates (rescaled)."""
    labels = {g["label"] for g in gts}
    boxes, labs = [], []
    for it in items:
        if not isinstance(it, dict):
            continue
        lab, box = it.get("label"), parse.coords4(it.get("bbox_2d"))
        if box is None or not isinstance(lab, str) or lab not in labels:
            continue
        boxes.append(maybe_rescale(box, info))
        labs.append(lab)
    return boxes, labs


def _map_detail(completion: str, solution: str, index: int, length_penalty: bool, info: dict):
    answer, gts, preds, failure = _pred(completion, solution)
    if answer is None:
        return 0.0, failure
    if answer == _NONE and _gt_text(solution) == _NONE:
        return 1.0, None
    if preds and gts:
        boxes, labs = _valid_preds(preds, gts, info)
        if boxes:
            stats = coco_ap([parse.coords4(g["bbox_2d"]) for g in gts], [g["label"] for g in gts],
                            boxes, labs)
            value = max(0.0, stats[index])
        else:
            value = 0.0
    else:
        value = 1.0 if (not preds and not gts) else 0.0
    if length_penalty and len(preds) > len(gts):
        value *= len(gts) / len(preds)
    return value, failure


def ovd_map_detail(completion: str, solution: str, **info):
    """COCO mAP@[.5:.95] of the predicted list for this image (VLM-R1's ``map`` reward)."""
    return _map_detail(completion, solution, 0, False, info)


def ovd_map50_detail(completion: str, solution: str, **info):
    """COCO AP at IoU 0.5 of the predicted list for this image."""
    return _map_detail(completion, solution, 1, False, info)


def ovd_odlength_detail(completion: str, solution: str, **info):
    """``ovd_map * min(1, n_gt / n_pred)``: VLM-R1's odLength, which stops box padding."""
    return _map_detail(completion, solution, 0, True, info)


# --------------------------------------------------------------------------- weighted sum
def _clean_text(text: str) -> str:
    """VLM-R1's ``clean_text``: last answer body, newlines folded, stripped, lower-cased."""
    body = parse.last_between(text, parse.ANSWER_OPEN, parse.ANSWER_CLOSE)
    if body is not None:
        text = body
    for ch in ("\n", "\r"):
        text = re.sub(r"(?<=\s)" + ch, "", text)
        text = re.sub(r"(?<!\s)" + ch, " ", text)
    return text.strip().rstrip(".").lower()


def _weighted_items(text: str):
    data = _fenced_json(_clean_text(text), last=False)
    return _as_items(data), (data is parse.PARSE_FAILED)


def _item_box(item, info, rescale: bool):
    box = parse.coords4(item.get("bbox_2d")) if isinstance(item, dict) else None
    return maybe_rescale(box, info) if (box is not None and rescale) else box


def _item_label(item) -> str:
    lab = item.get("label") if isinstance(item, dict) else None
    return lab.lower() if isinstance(lab, str) else ""


def ovd_weighted_sum_detail(completion: str, solution: str, **info):
    """VLM-R1's greedy-matching detection score.

    Pairs are matched greedily by highest IoU (>= 0.5); a pair with the wrong label scores IoU 0.
    ``score = 0.7 * sum(IoU) / n_gt + 0.3 * (1 - (misses / n_gt + false_alarms / n_pred) / 2)``.
    """
    preds, bad = _weighted_items(completion)
    gts, _ = _weighted_items(solution)
    failure = "bad_json" if bad else None
    if not gts:
        return (1.0 if not preds else 0.0), failure
    if not preds:
        return 0.0, failure or "no_boxes"
    conv = info.get("box_convention", "vlm_r1")
    pboxes = [_item_box(p, info, True) for p in preds]
    gboxes = [_item_box(g, info, False) for g in gts]
    ious = [[iou(p, g, conv) if (p is not None and g is not None) else 0.0 for g in gboxes]
            for p in pboxes]
    free_p, free_g = list(range(len(preds))), list(range(len(gts)))
    matched_iou = []
    while free_p and free_g:
        best, bp, bg = -1.0, -1, -1
        for pi in free_p:
            for gi in free_g:
                if ious[pi][gi] > best:
                    best, bp, bg = ious[pi][gi], pi, gi
        if best < 0.5:
            break
        matched_iou.append(best if _item_label(preds[bp]) == _item_label(gts[bg]) else 0.0)
        free_p.remove(bp)
        free_g.remove(bg)
    position = sum(matched_iou) / len(gts)
    completeness = 1.0 - (len(free_g) / len(gts) + len(free_p) / len(preds)) / 2.0
    return 0.7 * position + 0.3 * completeness, failure


# --------------------------------------------------------------------------- repetition
def _first_item_list_span(text: str) -> str | None:
    """``re.search(r'\\[\\s*{.*?"bbox_2d".*?"label".*?}\\s*\\]', text, re.DOTALL).group(0)`` in
    linear time: the leftmost ``[ {`` decides, and each lazy gap stops at its first option."""
    i = text.find("[")
    while i >= 0:
        j = parse._skip_space(text, i + 1)
        if j < len(text) and text[j] == "{":
            break
        i = text.find("[", i + 1)
    if i < 0:
        return None
    b = text.find('"bbox_2d"', j + 1)
    lab = text.find('"label"', b + 9) if b >= 0 else -1
    r = text.find("}", lab + 7) if lab >= 0 else -1
    while r >= 0:
        k = parse._skip_space(text, r + 1)
        if k < len(text) and text[k] == "]":
            return text[i:k + 1]
        r = text.find("}", r + 1)
    return None


def repetition_detail(completion: str, solution: str = "", **info):
    """VLM-R1's repetition penalty, in [-1, 0]: ``-(1 - unique / total)`` over (box, label)
    items of the answer's JSON list, or over word 6-grams when there is no such list."""
    body = parse.first_between(completion, parse.FENCE_JSON, parse.FENCE)
    if body is None:
        body = parse.first_between(completion, parse.FENCE, parse.FENCE)
        if not (body and body.strip()):
            body = _first_item_list_span(completion)
    data = parse.parse_json_list_lenient(body.strip()) if body and body.strip() else None
    if data:
        keys = [f"{it['bbox_2d']}_{it['label']}" for it in data
                if isinstance(it, dict) and "bbox_2d" in it and "label" in it]
        if not keys:
            return 0.0, None
        return -(1.0 - len(set(keys)) / len(keys)), None
    words = completion.lower().split()
    if len(words) < 6:
        return 0.0, None
    grams = list(zip(*[words[i:] for i in range(6)]))
    return -(1.0 - len(set(grams)) / len(grams)), None
