"""Box geometry shared by every reward: the two IoU conventions and VLM-R1's rescaling.

Boxes are ``[x1, y1, x2, y2]`` in pixels.

Two IoU conventions (``box_convention``; VLM-R1's is the default everywhere):

``"vlm_r1"``
    VLM-R1's REC code clips the intersection to ``[max(x1), min(x2) - 1]`` and adds the pixel
    back (``+ 1``), so the intersection is the continuous overlap but is counted only when the
    overlap is *wider and taller than one pixel*; areas are continuous ``(x2 - x1) * (y2 - y1)``.
    Two identical 1-pixel boxes therefore have IoU 0. Where that formula is undefined (union
    <= 0, only possible for zero-area or inverted boxes) the IoU is 0, and it is clipped to
    [0, 1] (VLM-R1 would raise or return a negative number there).
``"continuous"``
    The textbook IoU of closed boxes: overlap ``max(0, min(x2) - max(x1))`` per axis, areas from
    the same formula, 0 when the union is 0. This is also what pycocotools computes for boxes,
    so the OVD mAP rewards always use it (as VLM-R1's COCOeval does).
"""
from __future__ import annotations

Box = list  # [x1, y1, x2, y2]
CONVENTIONS = ("vlm_r1", "continuous")


def iou(a: Box, b: Box, convention: str = "vlm_r1") -> float:
    """IoU of two boxes under ``convention`` (see the module docstring).

    >>> iou([0, 0, 10, 10], [5, 0, 15, 10])   # overlap 5 x 10 = 50, union 150
    0.3333333333333333
    >>> iou([0, 0, 10, 10], [9, 0, 20, 10])   # 1 px overlap: not counted by VLM-R1's rule
    0.0
    >>> iou([0, 0, 10, 10], [9, 0, 20, 10], "continuous")   # 10 / (100 + 110 - 10)
    0.05
    """
    if convention == "vlm_r1":
        ix1, iy1 = max(a[0], b[0]), max(a[1], b[1])
        ix2, iy2 = min(a[2] - 1, b[2] - 1), min(a[3] - 1, b[3] - 1)
        inter = (ix2 - ix1 + 1) * (iy2 - iy1 + 1) if (ix1 < ix2 and iy1 < iy2) else 0
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    elif convention == "continuous":
        w = min(a[2], b[2]) - max(a[0], b[0])
        h = min(a[3], b[3]) - max(a[1], b[1])
        inter = w * h if (w > 0 and h > 0) else 0
        area_a = max(0, a[2] - a[0]) * max(0, a[3] - a[1])
        area_b = max(0, b[2] - b[0]) * max(0, b[3] - b[1])
        union = area_a + area_b - inter
    else:
        raise ValueError(f"unknown box convention {convention!r}; use one of {CONVENTIONS}")
    if not union > 0:
        return 0.0
    return min(1.0, max(0.0, float(inter) / union))


def rescale(box: Box, input_size, image_size) -> Box:
    """Map a box from the frame the model wrote it in (``input_size=(w, h)``: the resized input,
    or 1000 x 1000 for a 0-1000 family) to the original image (``image_size=(w, h)``), in VLM-R1's
    order of operations (``x / in_w * orig_w``).

    >>> rescale([14, 28, 28, 56], input_size=(28, 56), image_size=(100, 200))
    [50.0, 100.0, 100.0, 200.0]
    >>> rescale([250, 500, 500, 1000], input_size=(1000, 1000), image_size=(100, 200))  # Qwen3-VL's grid
    [25.0, 100.0, 50.0, 200.0]
    """
    in_w, in_h = input_size
    im_w, im_h = image_size
    return [box[0] / in_w * im_w, box[1] / in_h * im_h, box[2] / in_w * im_w, box[3] / in_h * im_h]


def maybe_rescale(box: Box, info: dict) -> Box:
    """Rescale when both ``input_size`` and ``image_size`` are given and valid, else unchanged."""
    ins, ims = info.get("input_size"), info.get("image_size")
    if not ins or not ims:
        return box
    try:
        if min(ins[0], ins[1]) <= 0:
            return box
        return rescale(box, ins, ims)
    except (TypeError, IndexError, ValueError):
        return box
