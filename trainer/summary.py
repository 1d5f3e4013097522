"""What a step logs and what a run prints at the end (used by orchestrator.py): the metric row, hack
and drift signals, the screening of flagged samples, the CPU share, and the closing summary."""
from __future__ import annotations

import json
import pathlib
import time

import ray

from rewards.boxes import iou
from trainer import evaluate


def step_metrics(step: int, batch, totals, tm: dict, phase: dict) -> dict:
    """The flat metric row of one step: ``batch`` is the ``trainer.pipeline.Batch`` it trained on,
    ``tm`` the learner's metrics, ``phase`` the driver's timings."""
    rollouts, scored = batch.rollouts, batch.scored
    names = sorted({n for r in rollouts for n in scored[r.key]["values"]})
    lengths = [len(r.completion_token_ids) for r in rollouts]
    records = [evaluate.record(r) for r in rollouts]
    staleness = step - 1 - batch.version  # updates between the generating weights and the trained ones
    row = {"step": step, "reward/mean": float(totals.mean()), "reward/std": float(totals.std()),
           **{f"reward/{n}": sum(scored[r.key]["values"].get(n, 0.0) for r in rollouts) / len(rollouts) for n in names},
           **{f"parse_failures/{k}": v for k, v in batch.failures.items()},
           "completion_len/mean": sum(lengths) / len(lengths), "completion_len/max": max(lengths),
           "truncated_frac": sum(r.finish_reason == "length" for r in rollouts) / len(rollouts),
           "boxes/pred_per_answer": sum(len(x["pred"]) for x in records) / len(records),
           "boxes/gt_per_answer": sum(len(x["gt"]) for x in records) / len(records),
           "rollout/tokens_per_s": sum(lengths) / max(batch.times["rollout"], 1e-9), "time/step_s": phase["step"],
           **{f"time/{k}_s": phase[k] for k in ("rollout", "reward", "train", "sync")},
           "sync/bytes": phase.get("sync_bytes", 0),
           "reward/queue_depth": phase["queue_depth"], "reward/worker_recoveries": phase["reward_recoveries"],
           "rollout/engine_restarts": phase.get("engine_restarts", 0),
           "skipped/prompts": len(batch.refused),  # refused by an engine (unreadable image, too long): dropped
           "staleness/max": staleness, "staleness/mean": float(staleness),
           "prompt_ids": [p.id for p in batch.prompts],
           **{k: v for k, v in batch.times.items() if k.startswith("sampling/")}}
    if batch.refused:
        row["refused"] = [[pid, why] for pid, why in batch.refused.items()]
    row.update(hack_signals(rollouts, records))
    rec = [x for x in records if "hit" in x]
    if rec:  # accuracy of the sampled answers: REC IoU > 0.5 (VLM-R1's criterion), QA scored 1
        row["accuracy"] = sum(x["hit"] for x in rec) / len(rec)
    row.update({k: v for k, v in tm.items()})
    return row


def hack_signals(rollouts, records) -> dict:
    """What the known reward hacks look like in one step's samples (``reward.triggers`` watch these):

    ``hack/boxes_over_gt``      predicted boxes per true box (box padding: VLM-R1's mAP hack)
    ``hack/duplicate_box_frac`` predicted boxes with IoU > 0.9 to an earlier box of the same answer
    ``hack/whole_image_frac``   predicted boxes covering 90% or more of the image
    ``hack/none_frac``          answers without a box where the image has a target (the None collapse)
    """
    n_pred = sum(len(x["pred"]) for x in records)
    n_gt = sum(len(x["gt"]) for x in records)
    dup = whole = none = with_target = 0
    for r, x in zip(rollouts, records):
        boxes = [b for b in x["pred"] if b]
        dups, wholes = _box_hacks(r, boxes)
        dup, whole = dup + sum(dups), whole + sum(wholes)
        if x["gt"]:
            with_target += 1
            none += not boxes
    return {"hack/boxes_over_gt": n_pred / max(n_gt, 1), "hack/duplicate_box_frac": dup / max(n_pred, 1),
            "hack/whole_image_frac": whole / max(n_pred, 1), "hack/none_frac": none / max(with_target, 1)}


def _box_hacks(rollout, boxes) -> tuple[list[bool], list[bool]]:
    """Per box: does it repeat an earlier box of the answer (IoU > 0.9); does it cover 90% or more
    of the image."""
    dups = [any(iou(b, a, "continuous") > 0.9 for a in boxes[:i]) for i, b in enumerate(boxes)]
    if not rollout.prompt.image_sizes:
        return dups, [False] * len(boxes)
    w, h = rollout.prompt.image_sizes[0]
    return dups, [max(0, min(b[2], w) - max(b[0], 0)) * max(0, min(b[3], h) - max(b[1], 0)) >= 0.9 * w * h
                  for b in boxes]


def sample_flags(rollout, record) -> set[str]:
    """The hack flags of one completion (``reward.triggers`` can screen them out of the gradient):
    a box repeating an earlier one (IoU > 0.9), a box covering 90% of the image, more boxes than
    the ground truth, no box where the image has a target, cut at ``max_new_tokens``."""
    boxes, flags = [b for b in record["pred"] if b], set()
    dups, wholes = _box_hacks(rollout, boxes)
    if any(dups):
        flags.add("duplicate_boxes")
    if any(wholes):
        flags.add("whole_image")
    if len(boxes) > len(record["gt"]):
        flags.add("extra_boxes")
    if record["gt"] and not boxes:
        flags.add("no_box")
    if rollout.finish_reason == "length":
        flags.add("truncated")
    return flags


# (training-row key, evaluation metric) compared by hack/train_eval_gap, the first pair a run has
GAP_PAIRS = (("accuracy", "accuracy"), ("reward/ovd_map", "mAP"))


def screen_out(rollouts, flags: frozenset, adv) -> float:
    """Set the advantage of every completion showing one of ``flags`` to 0 (in place): it stays out
    of the policy gradient. Returns the share screened."""
    if not flags:
        return 0.0
    hit = [bool(sample_flags(r, evaluate.record(r)) & flags) for r in rollouts]
    for i, h in enumerate(hit):
        if h:
            adv[i] = 0.0
    return sum(hit) / max(len(hit), 1)


def drift_signals(row: dict, first: dict | None, last_eval: dict | None) -> dict:
    """Signals that need more than one step (``reward.triggers`` watch these too):

    ``hack/length_growth``  mean completion length over the first step's (completions growing)
    ``hack/train_eval_gap`` the training metric minus the last held-out evaluation's: REC accuracy
                            of the samples against eval accuracy; OVD per-answer AP (``reward/ovd_map``,
                            when logged) against the eval set's COCO mAP, which is on a lower scale, so
                            watch its growth rather than its level

    >>> drift_signals({"completion_len/mean": 60, "accuracy": 0.5}, {"completion_len/mean": 40}, {"accuracy": 0.3})
    {'hack/length_growth': 1.5, 'hack/train_eval_gap': 0.2}
    """
    out = {}
    length, base = row.get("completion_len/mean"), (first or row).get("completion_len/mean")
    if length is not None and base:
        out["hack/length_growth"] = length / base
    for train_key, eval_key in GAP_PAIRS:
        if train_key in row and last_eval and eval_key in last_eval:
            out["hack/train_eval_gap"] = round(row[train_key] - last_eval[eval_key], 12)
            break
    return out


def summarize(history: list[dict], times: dict, wall: float, cpu_share: float | None = None,
              max_staleness: int = 0) -> dict:
    phases = sum(times.values())
    ids = [pid for row in history for pid in row.get("prompt_ids", [])]
    return {"steps": len(history), "samples": sum(row.get("items", 0) for row in history),
            "prompts": len(ids), "distinct_prompts": len(set(ids)),
            "skipped_prompts": [r for row in history for r in row.get("refused", [])],
            "reward_first": history[0]["reward/mean"] if history else None,
            "reward_last": history[-1]["reward/mean"] if history else None,
            "max_staleness": max_staleness,
            "cpu_utilisation": round(cpu_share, 3) if cpu_share is not None else None,
            "time_s": {**{k: round(v, 2) for k, v in times.items()}, "other": round(wall - phases, 2), "total": round(wall, 2)}}


HEADLINE = ("accuracy", "mean_iou", "mAP", "AP50", "recall@0.5", "mean_score")  # the eval metrics the summary compares


def eval_span(out_dir: pathlib.Path) -> str | None:
    """The headline val metrics at the first and the last evaluation saved under ``out_dir/eval``,
    as one line ("accuracy 0.187 -> 0.267, ..."), or None with fewer than two evaluations."""
    files = sorted((out_dir / "eval").glob("step_*.json")) if (out_dir / "eval").is_dir() else []
    if len(files) < 2:
        return None
    (a, b) = (json.loads(f.read_text())["metrics"] for f in (files[0], files[-1]))
    parts = [f"{k} {a[k]:.3f} -> {b[k]:.3f} ({b[k] - a[k]:+.3f})" for k in HEADLINE if k in a and k in b]
    steps = f"step {int(files[0].stem[5:])} -> {int(files[-1].stem[5:])}"
    return f"val ({steps}, {b.get('samples', '?')} samples): " + ", ".join(parts) if parts else None


def print_summary(s: dict, out_dir: pathlib.Path) -> None:
    t = s["time_s"]
    share = lambda k: f"{t[k]:.1f}s ({100 * t[k] / max(t['total'], 1e-9):.0f}%)"  # noqa: E731
    if not s["steps"]:
        print("\ndone: no steps to run (already at trainer.max_steps?)")
        return
    print(f"\ndone: {s['steps']} steps, {s['samples']} samples; reward {s['reward_first']:.3f} -> {s['reward_last']:.3f}")
    span = eval_span(out_dir)
    if span:
        print(span)
    print("time: " + ", ".join(f"{k} {share(k)}" for k in ("rollout", "reward", "train", "sync", "eval_ckpt", "other"))
          + (f" (asynchronous, max_staleness={s['max_staleness']}: rollout and reward ran beside training; 'train' "
             "is the wait for the learner after them)" if s.get("max_staleness") else ""))
    if s.get("skipped_prompts"):
        pid, why = s["skipped_prompts"][0]
        print(f"skipped: {len(s['skipped_prompts'])} prompts refused by the engines and left out of their steps "
              f"(skipped/prompts in metrics.jsonl), e.g. {pid}: {why}")
    for role, what in s.get("chosen", {}).items():
        print(f"{role}: {what}")
    if s.get("cpu_utilisation") is not None:
        print(f"machine utilisation during training steps: {100 * s['cpu_utilisation']:.0f}% of the CPU cores "
              "(process CPU time / wall time x cores)")
    print(f"metrics: {out_dir / 'metrics.jsonl'}  summary: {out_dir / 'summary.json'}"
          + (f"  report: {s['report']}" if s.get("report") else ""))


class CpuMeter:
    """Machine utilisation of the training loop: CPU seconds of every role process (and the
    driver) over wall seconds x cores, counted only between ``start()`` and ``stop()`` (so
    evaluations and checkpoints can be left out). A replaced actor starts counting from zero."""

    def __init__(self, groups: list, cores: float):
        self.groups, self.cores = groups, cores
        self.cpu, self.wall = 0.0, 0.0
        self._mark: tuple[dict, float, float] | None = None

    def _sample(self) -> dict:
        actors = [a for g in self.groups for a in g.actors]
        try:
            seconds = ray.get([a.cpu_seconds.remote() for a in actors], timeout=30)
        except (ray.exceptions.RayError, TimeoutError):
            return {}  # a role is dead or stuck: that interval is not counted
        return {a._actor_id.hex(): s for a, s in zip(actors, seconds)}

    def start(self) -> None:
        self._mark = (self._sample(), time.process_time(), time.perf_counter())

    def stop(self) -> None:
        if self._mark is None:
            return
        before, driver0, wall0 = self._mark
        now = self._sample()
        if now and before:
            self.cpu += sum(s - before.get(k, 0.0) for k, s in now.items()) + time.process_time() - driver0
            self.wall += time.perf_counter() - wall0
        self._mark = None

    def share(self) -> float | None:
        """CPU busy share of the measured intervals (1.0: every core busy all the time)."""
        return self.cpu / (self.wall * self.cores) if self.wall > 0 else None


class StepTimes:
    """Where the run's wall time goes: each step's phases (the metric row's ``time/*``), the run's
    totals (summary.json) and, through ``meter``, the CPU share of the training part of each step
    (from ``start`` to ``stop``: evaluations and checkpoints are left out)."""

    def __init__(self, groups: list, cores: float):
        self.meter = CpuMeter(groups, cores)
        self.total = {"rollout": 0.0, "reward": 0.0, "train": 0.0, "sync": 0.0, "eval_ckpt": 0.0}
        self.t_run = self.t_step = self.t = time.perf_counter()
        self.laps: dict[str, float] = {}

    def start(self) -> None:
        self.meter.start()
        self.t_step = self.t = time.perf_counter()
        self.laps = {}

    def lap(self, name: str) -> None:
        """Seconds since the last lap (or ``start`` / ``stop``) are phase ``name``."""
        now = time.perf_counter()
        self.laps[name], self.t = now - self.t, now
        if name == "eval_ckpt":
            self.total[name] += self.laps[name]

    def stop(self, batch, fresh, sync_bytes: int) -> dict:
        """The step's phases. ``batch``: the batch trained; ``fresh``: the batch generated during the
        step (the same one when synchronous; step + K's, or None, when asynchronous), whose rollout
        and reward seconds the step's wall time holds."""
        self.meter.stop()
        made = fresh.times if fresh is not None else {}
        phase = {**batch.times, "train": self.laps["train"], "sync": self.laps["sync"], "sync_bytes": sync_bytes,
                 "rollout": made.get("rollout", 0.0), "reward": made.get("reward", 0.0),
                 "step": time.perf_counter() - self.t_step}
        for k in ("rollout", "reward", "train", "sync"):
            self.total[k] += phase[k]
        self.t = time.perf_counter()
        return phase

    def wall(self) -> float:
        return time.perf_counter() - self.t_run
