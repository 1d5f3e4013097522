"""What a step logs and what a run prints at the end (used by orchestrator.py)."""
from __future__ import annotations

import pathlib


def step_metrics(step, batch, rollouts, scored, failures, totals, tm, phase: dict) -> dict:
    from trainer import evaluate
    names = sorted({n for r in rollouts for n in scored[r.key]["values"]})
    lengths = [len(r.completion_token_ids) for r in rollouts]
    records = [evaluate.record(r) for r in rollouts]
    row = {"step": step, "reward/mean": float(totals.mean()), "reward/std": float(totals.std()),
           **{f"reward/{n}": sum(scored[r.key]["values"].get(n, 0.0) for r in rollouts) / len(rollouts) for n in names},
           **{f"parse_failures/{k}": v for k, v in failures.items()},
           "completion_len/mean": sum(lengths) / len(lengths), "completion_len/max": max(lengths),
           "truncated_frac": sum(r.finish_reason == "length" for r in rollouts) / len(rollouts),
           "boxes/pred_per_answer": sum(len(x["pred"]) for x in records) / len(records),
           "boxes/gt_per_answer": sum(len(x["gt"]) for x in records) / len(records),
           "rollout/tokens_per_s": sum(lengths) / max(phase["rollout"], 1e-9), "time/step_s": phase["step"],
           **{f"time/{k}_s": phase[k] for k in ("rollout", "reward", "train", "sync")},
           "reward/queue_depth": phase["queue_depth"], "reward/worker_recoveries": phase["reward_recoveries"],
           "rollout/engine_restarts": phase.get("engine_restarts", 0),
           "prompt_ids": [p.id for p in batch]}
    rec = [x for x in records if "hit" in x]
    if rec:  # REC accuracy of the sampled answers (IoU > 0.5), VLM-R1's criterion
        row["accuracy"] = sum(x["hit"] for x in rec) / len(rec)
    row.update({k: v for k, v in tm.items()})
    return row


def summarize(history: list[dict], times: dict, wall: float) -> dict:
    phases = sum(times.values())
    ids = [pid for row in history for pid in row.get("prompt_ids", [])]
    return {"steps": len(history), "samples": sum(row.get("items", 0) for row in history),
            "prompts": len(ids), "distinct_prompts": len(set(ids)),
            "reward_first": history[0]["reward/mean"] if history else None,
            "reward_last": history[-1]["reward/mean"] if history else None,
            "time_s": {**{k: round(v, 2) for k, v in times.items()}, "other": round(wall - phases, 2), "total": round(wall, 2)}}


def print_summary(s: dict, out_dir: pathlib.Path) -> None:
    t = s["time_s"]
    share = lambda k: f"{t[k]:.1f}s ({100 * t[k] / max(t['total'], 1e-9):.0f}%)"  # noqa: E731
    if not s["steps"]:
        print("\ndone: no steps to run (already at trainer.max_steps?)")
        return
    print(f"\ndone: {s['steps']} steps, {s['samples']} samples; reward {s['reward_first']:.3f} -> {s['reward_last']:.3f}")
    print("time: " + ", ".join(f"{k} {share(k)}" for k in ("rollout", "reward", "train", "sync", "eval_ckpt", "other")))
    print(f"metrics: {out_dir / 'metrics.jsonl'}  summary: {out_dir / 'summary.json'}"
          + (f"  report: {s['report']}" if s.get("report") else ""))
