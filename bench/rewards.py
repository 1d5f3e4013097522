"""Reward throughput: completions scored per second, and the mAP rewards against pycocotools.

    python -m bench.rewards [--cases 300] [--boxes 1 4 16]

For each reward, scores the same synthetic OVD/REC completions; for ``ovd_map`` the baseline is
what VLM-R1 does per completion (build a COCO ground truth, ``loadRes``, ``COCOeval`` evaluate /
accumulate / summarize, via pycocotools), measured in the same run on the same cases. The size
knob is the number of boxes per image. Prints a markdown table and writes bench/results/rewards.json.
"""
from __future__ import annotations

import argparse
import json
import random

from bench.common import best_of, machine, save, table
from conf.hardware import describe_cpu
from rewards import REGISTRY
from rewards.coco_ap import reference_coco_ap

LABELS = ["red circle", "blue square", "green triangle", "yellow star"]


def _cases(n: int, boxes: int, seed: int = 0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        gt = []
        for _ in range(boxes):
            x, y = rng.randint(0, 400), rng.randint(0, 400)
            gt.append({"bbox_2d": [x, y, x + rng.randint(10, 100), y + rng.randint(10, 100)], "label": rng.choice(LABELS)})
        pred = [{"bbox_2d": [v + rng.randint(-8, 8) for v in g["bbox_2d"]], "label": g["label"]} for g in gt]
        pred += [{"bbox_2d": [5, 5, 40, 40], "label": rng.choice(LABELS)} for _ in range(rng.randint(0, 2))]
        sol = "```json\n" + json.dumps(gt) + "\n```"
        comp = "<think>I see shapes.</think><answer>```json\n" + json.dumps(pred) + "\n```</answer>"
        out.append((comp, sol, gt, pred))
    return out


def _pycocotools_map(gt, pred):
    """VLM-R1's per-completion mAP: a fresh COCO + COCOeval for one image."""
    stats = reference_coco_ap([g["bbox_2d"] for g in gt], [g["label"] for g in gt],
                              [p["bbox_2d"] for p in pred], [p["label"] for p in pred])
    return 0.0 if stats is None else max(0.0, stats[0])


def run(n_cases: int = 300, box_counts=(1, 4, 16)) -> list[dict]:
    rows = []
    for boxes in box_counts:
        cases = _cases(n_cases, boxes)
        t_coco = best_of(lambda: [_pycocotools_map(gt, pred) for _, _, gt, pred in cases], 2)
        coco_rate = n_cases / t_coco
        rows.append({"reward": "pycocotools COCOeval (VLM-R1 baseline)", "boxes": boxes,
                     "completions_per_s": coco_rate, "x_vs_pycocotools": 1.0})
        for name, fn in REGISTRY.items():
            t = best_of(lambda: [fn(c, s) for c, s, _, _ in cases], 3)
            rows.append({"reward": name, "boxes": boxes, "completions_per_s": n_cases / t,
                         "x_vs_pycocotools": (n_cases / t) / coco_rate})
        # same values as the baseline, on these very cases
        diff = max(abs(REGISTRY["ovd_map"](c, s) - _pycocotools_map(gt, p)) for c, s, gt, p in cases)
        next(r for r in rows[-len(REGISTRY):] if r["reward"] == "ovd_map")["max_abs_diff_vs_pycocotools"] = diff
    return rows


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=300)
    ap.add_argument("--boxes", type=int, nargs="+", default=[1, 4, 16], help="boxes per image (size knob)")
    args = ap.parse_args(argv)
    rows = run(args.cases, args.boxes)
    print(f"## Rewards ({describe_cpu()}, {machine()['date']})\n")
    print(table(rows, ["reward", "boxes", "completions_per_s", "x_vs_pycocotools", "max_abs_diff_vs_pycocotools"]))
    print(f"\nsaved {save('rewards', rows)}")
    return rows


if __name__ == "__main__":
    main()
