"""Evaluation: greedy answers from the rollout engines, scored with VLM-R1's protocol.

REC: accuracy is IoU > 0.5 between the first answer box (rescaled from the model's input pixels
to the original image) and the ground truth, VLM-R1's criterion; mean IoU is reported too.
Optionally VLM-R1's random subset (``eval.max_samples`` rows drawn with ``eval.subset_seed`` 42).
OVD: one dataset-level COCOeval (pycocotools) over every val image -- mAP@[.5:.95], AP50, AP75 --
with every prediction scored 1.0 and labels outside the ground-truth vocabulary dropped, plus
greedy precision / recall at IoU 0.5 (a prediction matches an unmatched ground truth of the same
label). QA (answers that are not boxes): the row's accuracy reward (its ``accu_reward_method``,
else VLM-R1's ``default``); accuracy is the share scored 1, ``mean_score`` the mean.
``records`` keep per-image boxes for the report's gallery.
"""
from __future__ import annotations

import contextlib
import io
import json
import random

from rewards import REGISTRY, parse, resolve
from rewards.boxes import iou, maybe_rescale
from rewards.ovd import gt_items
from rewards.rec import solution_box
from trainer.progress import progress


def subset(prompts: list, max_samples: int | None, seed: int = 42) -> list:
    """VLM-R1's evaluation subset: ``max_samples`` rows drawn at random with ``seed``."""
    if not max_samples or max_samples >= len(prompts):
        return list(prompts)
    return random.Random(seed).sample(list(prompts), max_samples)


def _info(r) -> dict:
    p = r.prompt
    return {"image_size": p.image_sizes[0] if p.image_sizes else None,
            "input_size": r.input_sizes[0] if r.input_sizes else None}


def rec_record(r) -> dict:
    """One REC answer: predicted box (original pixels), ground truth, IoU, hit."""
    info = _info(r)
    value, failure = REGISTRY["rec_iou"].evaluate(r.completion_text, r.prompt.solution, **info)
    answer = parse.first_answer(r.completion_text)
    box = parse.first_int_box(answer) if answer is not None else None
    pred = [maybe_rescale(box, info)] if box else []
    return {"id": r.prompt.id, "image": r.prompt.images[0] if r.prompt.images else None, "question": r.prompt.question,
            "completion": r.completion_text, "gt": [solution_box(r.prompt.solution)], "pred": pred,
            "gt_labels": [""], "pred_labels": [""] * len(pred), "iou": value, "hit": value > 0.5, "failure": failure}


def ovd_record(r) -> dict:
    """One OVD answer: predicted and ground-truth boxes with labels (original pixels)."""
    info = _info(r)
    answer = parse.last_answer(r.completion_text)
    preds = []
    if answer is not None:
        blocks = parse.find_all_between(answer, parse.FENCE_JSON, parse.FENCE)
        data = parse.loads(blocks[-1].strip()) if blocks else None
        for it in data if isinstance(data, list) else []:
            box = parse.coords4(it.get("bbox_2d")) if isinstance(it, dict) else None
            if box is not None and isinstance(it.get("label"), str):
                preds.append((maybe_rescale(box, info), it["label"]))
    gts = [(parse.coords4(g["bbox_2d"]), g["label"]) for g in gt_items(r.prompt.solution)]
    return {"id": r.prompt.id, "image": r.prompt.images[0] if r.prompt.images else None, "question": r.prompt.question,
            "completion": r.completion_text, "gt": [b for b, _ in gts], "gt_labels": [l for _, l in gts],
            "pred": [b for b, _ in preds], "pred_labels": [l for _, l in preds],
            "failure": None if answer is not None else "no_answer"}


def qa_record(r) -> dict:
    """One answer that is not a box, scored by the row's accuracy reward."""
    method = resolve(r.prompt.accu_method or "default")
    value, failure = REGISTRY[method].evaluate(r.completion_text, r.prompt.solution, **_info(r))
    return {"id": r.prompt.id, "image": r.prompt.images[0] if r.prompt.images else None, "question": r.prompt.question,
            "completion": r.completion_text, "gt": [], "pred": [], "gt_labels": [], "pred_labels": [],
            "answer": parse.last_answer(r.completion_text), "truth": r.prompt.solution, "reward": method,
            "score": value, "hit": value >= 1.0, "failure": failure}


def qa_metrics(records: list[dict]) -> dict:
    n = len(records)
    return {"samples": n, "accuracy": sum(r["hit"] for r in records) / max(n, 1),
            "mean_score": sum(r["score"] for r in records) / max(n, 1),
            "parse_failures": sum(r["failure"] is not None for r in records)}


def rec_metrics(records: list[dict]) -> dict:
    n = len(records)
    return {"samples": n, "accuracy": sum(r["hit"] for r in records) / max(n, 1),
            "mean_iou": sum(r["iou"] for r in records) / max(n, 1),
            "parse_failures": sum(r["failure"] is not None for r in records),
            "boxes_per_answer": sum(len(r["pred"]) for r in records) / max(n, 1)}


def ovd_metrics(records: list[dict]) -> dict:
    """Dataset-level COCO AP with pycocotools, and greedy precision/recall at IoU 0.5."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    cats: dict[str, int] = {}
    for r in records:
        for lab in r["gt_labels"]:
            cats.setdefault(lab, len(cats) + 1)
    images, anns, dets = [], [], []
    for i, r in enumerate(records):
        images.append({"id": i, "width": 10**6, "height": 10**6})
        for b, lab in zip(r["gt"], r["gt_labels"]):
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cats[lab], "iscrowd": 0,
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": (b[2] - b[0]) * (b[3] - b[1])})
        for b, lab in zip(r["pred"], r["pred_labels"]):
            if lab in cats:
                dets.append({"image_id": i, "category_id": cats[lab], "score": 1.0,
                             "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]})
    stats = [0.0, 0.0, 0.0]
    if anns and dets:
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO()
            gt.dataset = {"images": images, "annotations": anns,
                          "categories": [{"id": c, "name": n} for n, c in cats.items()]}
            gt.createIndex()
            ev = COCOeval(gt, gt.loadRes(dets), "bbox")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        stats = [max(0.0, float(v)) for v in ev.stats[:3]]
    tp = fp = fn = 0
    for r in records:
        free = list(range(len(r["gt"])))
        for b, lab in zip(r["pred"], r["pred_labels"]):
            cand = [(iou(b, r["gt"][g], "continuous"), g) for g in free if r["gt_labels"][g] == lab]
            best = max(cand, default=(0.0, -1))
            if best[0] >= 0.5:
                tp += 1
                free.remove(best[1])
            else:
                fp += 1
        fn += len(free)
    n = len(records)
    return {"samples": n, "mAP": stats[0], "AP50": stats[1], "AP75": stats[2],
            "precision@0.5": tp / max(tp + fp, 1), "recall@0.5": tp / max(tp + fn, 1),
            "boxes_per_answer": sum(len(r["pred"]) for r in records) / max(n, 1),
            "gt_boxes_per_image": sum(len(r["gt"]) for r in records) / max(n, 1),
            "parse_failures": sum(r["failure"] is not None for r in records)}


RECORDS = {"rec": (rec_record, rec_metrics), "ovd": (ovd_record, ovd_metrics), "qa": (qa_record, qa_metrics)}


def record(r) -> dict:
    return RECORDS[r.prompt.task][0](r)


def score_rollouts(rollouts: list, task: str | None = None) -> tuple[dict, list[dict]]:
    """(metrics, per-sample records) for greedy rollouts; with rows of several tasks the metrics
    of each are prefixed with the task (``rec/``, ``ovd/``, ``qa/``)."""
    records = [record(r) for r in rollouts]
    by_task = {t: [rec for r, rec in zip(rollouts, records) if r.prompt.task == t] for t in RECORDS}
    by_task = {t: recs for t, recs in by_task.items() if recs}
    metrics = {}
    for t, recs in by_task.items():
        m = RECORDS[t][1](recs)
        metrics.update(m if len(by_task) == 1 else {f"{t}/{k}": v for k, v in m.items()})
    return metrics, records


def run_eval(pool, prompts: list, task: str, chunk: int = 64) -> tuple[dict, list[dict]]:
    """Greedy answers for every prompt (sharded over the engines of ``pool``, an
    ``actors.engine_pool.EnginePool``, ``chunk`` prompts per engine at a time, with a progress
    bar), then the metrics."""
    size = chunk * max(1, pool.engines.n)
    parts = [prompts[i:i + size] for i in range(0, len(prompts), size)]
    rollouts, refused = [], []
    for part in progress(parts, desc="eval", total=len(parts), leave=False):
        rollouts += pool.generate(part, 1, True)
        refused += getattr(pool, "refused", [])
    metrics, records = score_rollouts(rollouts, task)
    if refused:  # prompts an engine could not take (unreadable image, too long): counted, not scored
        metrics["skipped"] = len(refused)
        print(f"evaluation: {len(refused)} prompts refused by the engines and not scored, e.g. "
              f"{refused[0].prompt.id}: {refused[0].reason}", flush=True)
    return metrics, records


def format_table(metrics: dict, title: str) -> str:
    lines = [f"| {title} | value |", "|---|---|"]
    for k, v in metrics.items():
        lines.append(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |")
    return "\n".join(lines)


def save(path, metrics: dict, records: list[dict]) -> None:
    """Results as JSON: metrics and every record (the report's gallery reads them)."""
    with open(path, "w") as f:
        json.dump({"metrics": metrics, "records": records}, f)


def latest(out_dir, step: int) -> dict | None:
    """Metrics of the newest evaluation saved at or before ``step`` (None if there is none)."""
    done = sorted(p for p in (out_dir / "eval").glob("step_*.json") if int(p.stem[5:]) <= step) \
        if (out_dir / "eval").is_dir() else []
    return json.loads(done[-1].read_text())["metrics"] if done else None


def periodic(engines, prompts: list, task: str, step: int, out_dir, monitor) -> dict:
    """Evaluate during training: greedy answers on the val subset, saved as ``eval/step_N.json``
    and logged as ``eval/*``."""
    metrics, records = run_eval(engines, prompts, task)
    (out_dir / "eval").mkdir(exist_ok=True)
    save(out_dir / "eval" / f"step_{step:06d}.json", metrics, records)
    monitor.log({"step": step, **{f"eval/{k}": v for k, v in metrics.items()}})
    monitor.log_samples(step, records)
    return metrics
