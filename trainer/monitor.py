"""Where metrics go: ``metrics.jsonl``, Ray metrics (dashboard + Prometheus) and wandb.

``Monitor.log(row)`` sends one step's flat ``{name: number}`` row everywhere. Ray gauges are named
``vlmr1_<name>`` with non-alphanumerics as ``_`` (Prometheus shows them as ``ray_vlmr1_...``);
wandb runs offline unless ``wandb.mode=online``. ``HackWatch`` follows VLM-R1's reward hack --
answers padded with boxes, completions growing -- and warns when either drifts.
"""
from __future__ import annotations

import json
import math
import pathlib
import re
import warnings
from collections import deque

from data.images import open_rgb_or_none


def metric_name(key: str) -> str:
    return "vlmr1_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)


class Monitor:
    def __init__(self, out_dir: pathlib.Path, wandb_cfg=None, run_config: dict | None = None, use_ray: bool = True):
        self.path = pathlib.Path(out_dir) / "metrics.jsonl"
        self.file = open(self.path, "a")
        self.gauges: dict = {}
        self.use_ray = use_ray
        self.wandb = None
        if wandb_cfg is not None and wandb_cfg.mode != "disabled":
            self.wandb = _start_wandb(pathlib.Path(out_dir), wandb_cfg, run_config or {})
        self.watch = HackWatch()

    def log(self, row: dict) -> list[str]:
        """Write ``row`` everywhere; returns any drift warnings it raised."""
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        numbers = {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.use_ray:
            self._ray(numbers)
        if self.wandb is not None:
            self.wandb.log(numbers, step=int(row.get("step", 0)))
        return self.watch.update(row)

    def log_samples(self, step: int, records: list[dict], n: int = 8) -> dict | None:
        """wandb (when on), at an evaluation: the first ``n`` val images with their true (green) and
        predicted (red) boxes, labelled, as ``wandb.Image`` boxes, and a table of every record's
        question, completion and score. Returns what was logged (None with wandb off)."""
        if self.wandb is None:
            return None
        import wandb
        images = [im for im in (_boxed_image(wandb, r) for r in records[:n]) if im is not None]
        table = wandb.Table(columns=["id", "question", "completion", "truth", "answer", "score"],
                            data=[[r["id"], r["question"], r["completion"], _shown(r, "gt"), _shown(r, "pred"),
                                   float(r.get("iou", r.get("score", 0.0)) or 0.0)] for r in records])
        logged = {"eval/samples": images, "eval/answers": table}
        self.wandb.log(logged, step=step)
        return logged

    def _ray(self, numbers: dict) -> None:
        from ray.util import metrics
        for k, v in numbers.items():
            if not math.isfinite(v):
                continue
            g = self.gauges.get(k)
            if g is None:
                g = self.gauges[k] = metrics.Gauge(metric_name(k), description=k)
            g.set(v)

    def close(self) -> None:
        self.file.close()
        if self.wandb is not None:
            self.wandb.finish()


def _shown(record: dict, which: str) -> str:
    """A record's boxes as text: ``label [x1, y1, x2, y2]; ...``."""
    labels = list(record.get(f"{which}_labels", [])) + [""] * len(record[which])
    return "; ".join(f"{lab} {list(b)}".strip() for b, lab in zip(record[which], labels) if b)


def box_data(record: dict) -> tuple[dict, dict]:
    """wandb's ``boxes`` of a record: ``{"ground_truth": [...], "predictions": [...]}`` in image
    pixels, each box captioned with its label (REC: truth / answer), and the class labels by id;
    boxes that are not finite, ordered rectangles are left out."""
    classes: dict[str, int] = {}
    boxes = {}
    for which, key, default in (("ground_truth", "gt", "truth"), ("predictions", "pred", "answer")):
        labels = list(record.get(f"{key}_labels", [])) + [""] * len(record[key])
        data = []
        for b, lab in zip(record[key], labels):
            if b and len(b) == 4 and all(isinstance(v, (int, float)) and math.isfinite(v) for v in b) \
                    and b[2] > b[0] and b[3] > b[1]:
                name = lab or default
                data.append({"position": {"minX": float(b[0]), "minY": float(b[1]), "maxX": float(b[2]),
                                          "maxY": float(b[3])}, "domain": "pixel",
                             "class_id": classes.setdefault(name, len(classes) + 1), "box_caption": name})
        boxes[which] = data
    return boxes, {i: name for name, i in classes.items()}


def _boxed_image(wandb, record: dict):
    """``wandb.Image`` of a record's image with its true and predicted boxes (labelled), or None
    when the image cannot be read."""
    img = open_rgb_or_none(record.get("image"))
    if img is None:
        return None
    boxes, class_labels = box_data(record)
    return wandb.Image(img, caption=record["question"][-120:],
                       boxes={k: {"box_data": v, "class_labels": class_labels} for k, v in boxes.items()})


def _start_wandb(out_dir: pathlib.Path, cfg, run_config: dict):
    import os
    import wandb
    (out_dir / "wandb").mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_DIR", str(out_dir / "wandb"))
    os.environ.setdefault("WANDB_CACHE_DIR", str(out_dir / "wandb" / "cache"))
    os.environ.setdefault("WANDB_CONFIG_DIR", str(out_dir / "wandb" / "config"))
    run_id = re.sub(r"[^a-zA-Z0-9_-]", "-", str(out_dir.resolve()))[-64:].strip("-")
    return wandb.init(project=cfg.project, name=cfg.run_name or out_dir.name, dir=str(out_dir / "wandb"),
                      mode=cfg.mode, config=run_config, id=run_id, resume="allow")


class HackWatch:
    """Warns when predicted boxes per answer outgrow the ground truth (box padding), collapse
    towards none (answering None everywhere), or completions keep growing.

    VLM-R1 saw OVD policies pad answers with redundant boxes under a plain mAP reward; a policy
    whose boxes rarely match learns the opposite (seen here, see docs/rewards.md); all are cheap to watch."""

    def __init__(self, window: int = 5, box_ratio: float = 1.5, length_ratio: float = 2.0, empty_ratio: float = 0.1):
        self.window, self.box_ratio, self.length_ratio, self.empty_ratio = window, box_ratio, length_ratio, empty_ratio
        self.boxes, self.lengths = deque(maxlen=window), deque(maxlen=window)
        self.first_length = None
        self.warned: set = set()

    def update(self, row: dict) -> list[str]:
        out = []
        pred, gt = row.get("boxes/pred_per_answer"), row.get("boxes/gt_per_answer")
        if pred is not None and gt:
            self.boxes.append(pred / gt)
            if len(self.boxes) == self.window and min(self.boxes) > self.box_ratio and "boxes" not in self.warned:
                out.append(f"step {row.get('step')}: answers carry {pred:.2f} boxes for {gt:.2f} true ones "
                           f"({self.box_ratio}x for {self.window} steps): the box-padding reward hack? "
                           f"use ovd_odlength instead of ovd_map")
            if len(self.boxes) == self.window and max(self.boxes) < self.empty_ratio and "none" not in self.warned:
                out.append(f"step {row.get('step')}: answers carry {pred:.2f} boxes for {gt:.2f} true ones "
                           f"(under {self.empty_ratio}x for {self.window} steps): the policy answers None to "
                           f"everything (rewarded on images without targets)? check the share of such rows")
        length = row.get("completion_len/mean")
        if length is not None:
            self.first_length = self.first_length or length
            self.lengths.append(length)
            if (len(self.lengths) == self.window and min(self.lengths) > self.length_ratio * self.first_length
                    and "length" not in self.warned):
                out.append(f"step {row.get('step')}: completions average {length:.0f} tokens, "
                           f"{length / self.first_length:.1f}x the first step's")
        for msg in out:
            self.warned.add("none" if "None" in msg else "boxes" if "padding" in msg else "length")
            warnings.warn(msg, stacklevel=2)
        return out
