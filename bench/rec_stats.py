"""The numbers of the REC comparisons (``bench.learning``, ``bench.testbed``, ``bench.probe``):
accuracy and mean IoU per val split from eval records, means with standard errors, and the
constant-box floor of a val set."""
from __future__ import annotations

import functools
import json
import math
import pathlib


def split_tags(shifts) -> dict[str, str]:
    """Split name -> the id tag of its rows (``rec-val-N``, ``rec-val_ood-N``, ``rec-val_small-N``...)."""
    return {"in": "-val-", "ood": "-val_ood-", **{name: f"-val_{name}-" for name in shifts}}


def split_metrics(records: list[dict], tags: dict[str, str] | None = None, ids: set | None = None) -> dict:
    """REC accuracy / mean IoU per split, with the per-image values kept for standard errors across
    seeds; ``ids``: only those rows (a curve's fixed subset)."""
    out = {}
    for split, tag in (tags or split_tags(())).items():
        recs = [r for r in records if tag in r["id"] and (ids is None or r["id"] in ids)]
        out[split] = {"hit": [float(r["hit"]) for r in recs], "iou": [float(r["iou"]) for r in recs]}
    return out


def mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    m = sum(values) / n
    var = sum((v - m) ** 2 for v in values) / max(n - 1, 1)
    return m, math.sqrt(var / n)


def diff_se(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean of ``a`` minus mean of ``b``, and its standard error (independent arms)."""
    (ma, sa), (mb, sb) = mean_se(a), mean_se(b)
    return ma - mb, math.sqrt(sa ** 2 + sb ** 2)


@functools.lru_cache(maxsize=None)  # (bench.testbed prints its table after every variant)
def constant_box(data: pathlib.Path, name: str = "rec_val.jsonl") -> dict:
    """The no-localisation floor of a val set (``data / name``): the single box (in image-relative
    coordinates, on a 1/20 grid) that scores best when answered for every image, its accuracy and
    mean IoU. A model that answers one box everywhere reaches this without looking."""
    import numpy as np
    from PIL import Image
    gts = []
    for line in (data / name).read_text().splitlines():
        row = json.loads(line)
        with Image.open(data / row["image"]) as im:
            w, h = im.size
        x1, y1, x2, y2 = json.loads(row["conversations"][1]["value"])
        gts.append((x1 / w, y1 / h, x2 / w, y2 / h))
    g = np.array(gts)  # [n, 4]
    v = np.linspace(0, 1, 21)
    xs = np.array([(a, b) for a in v for b in v if b > a])  # [m, 2] (lo, hi)
    cand = np.array([(x[0], y[0], x[1], y[1]) for x in xs for y in xs])  # [M, 4]
    ix = np.clip(np.minimum(cand[:, None, 2], g[None, :, 2]) - np.maximum(cand[:, None, 0], g[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(cand[:, None, 3], g[None, :, 3]) - np.maximum(cand[:, None, 1], g[None, :, 1]), 0, None)
    inter = ix * iy
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    iou = inter / (area(cand)[:, None] + area(g)[None, :] - inter)
    acc = (iou > 0.5).mean(1)
    best = int(acc.argmax())
    return {"box": [round(float(c), 2) for c in cand[best]], "acc": float(acc[best]), "iou": float(iou[best].mean())}
