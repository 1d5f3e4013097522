"""Dynamic sampling on the localisation testbed: groups with gradient signal, extra generations,
and held-out accuracy per second of training, against the same runs without it.

    python -m bench.dynamic_sampling [--steps 150] [--seeds 0 1] [--reward rec_acc] [--arms off on auto]
                                     [--out outputs/dynamic_sampling]

Each arm is ``orchestrator.py conf=rec`` from the same warm start (seed 0's), with the accuracy
reward ``--reward`` in place of the continuous ``rec_iou``: ``rec_acc`` (IoU > 0.5, 0 or 1: the
binary reward DAPO's dynamic sampling was made for; whole groups of 0s or 1s are common) or
``rec_iou`` (continuous: nearly every group has spread, and dynamic sampling has little to do).
``off`` trains on every group, as VLM-R1 does; ``on`` keeps groups whose metric has spread and
refills the rest (``rollout.dynamic_sampling``, up to 3 rounds, exactly the missing count); ``auto``
is ``on`` with ``oversample: auto`` (each step starts with B / recent rate prompts, so one generation
call usually fills it; the surplus is dropped). All are evaluated on all 300 val
images every ``--eval-steps``; "train s" is the summed step time (rollout, refills, reward, update,
sync), the evaluations excluded (the same in every arm). An arm whose run exists is not rerun
(``--fresh`` starts over). Writes ``--out``/dynamic_sampling.{md,json}.
"""
from __future__ import annotations

import argparse
import json
import pathlib

from bench.stages import prepare_out, rows_of, run_stage
from bench.rec_stats import mean_se


def arm_figures(run_dir: pathlib.Path, G: int) -> dict:
    """What one run shows: per-step sampling figures and the eval curve against train time."""
    rows = rows_of(run_dir)
    steps = [r for r in rows if "time/step_s" in r]
    clock, t = {}, 0.0
    for r in steps:
        t += r["time/step_s"]
        clock[r["step"]] = t
    evals = [(r["step"], r["eval/accuracy"], r.get("eval/mean_iou")) for r in rows if "eval/accuracy" in r]
    kept = sum(r.get("sampling/signal_frac", 1.0) for r in steps) * (len(steps[0].get("prompt_ids", [])) or 1)
    generated = sum(r.get("sampling/prompts_generated", len(r.get("prompt_ids", []))) for r in steps)
    return {"steps": len(steps), "train_s": t,
            "signal_frac": sum(r.get("sampling/signal_frac", float("nan")) for r in steps) / len(steps),
            "prompts_generated_per_step": generated / len(steps),
            "generations_per_kept_group": generated * G / max(kept, 1),
            "calls_per_step": sum(1 + r.get("sampling/rounds", 0) for r in steps) / len(steps),
            "curve": [{"step": s, "train_s": clock.get(s, 0.0), "accuracy": a, "mean_iou": m} for s, a, m in evals]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--eval-steps", type=int, default=50)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--reward", default="rec_acc", choices=["rec_acc", "rec_iou"])
    ap.add_argument("--max-rounds", type=int, default=3)
    ap.add_argument("--arms", nargs="+", default=["off", "on", "auto"], choices=["off", "on", "auto"])
    ap.add_argument("--out", default="outputs/dynamic_sampling")
    ap.add_argument("--fresh", action="store_true")
    args = ap.parse_args(argv)
    out = prepare_out(args.out, args.fresh)
    from conf.hardware import describe_cpu
    from data.tiny_model import resolve_model_path
    warm = resolve_model_path("builtin:tiny-qwen3-vl-one-shape", 0)
    G = 8  # conf=rec's rollout.num_generations
    reward = ["reward.funcs.rec_iou=0.0", "reward.funcs.rec_acc=1.0"] if args.reward == "rec_acc" else []
    log, arms = [], {a: [] for a in args.arms}
    for seed in args.seeds:
        for arm in args.arms:
            d = run_stage(f"{arm}_s{seed}", out, [
                "conf=rec", f"seed={seed}", f"model.path={warm}", f"trainer.max_steps={args.steps}",
                f"trainer.eval_steps={args.eval_steps}", f"trainer.save_steps={args.steps}", "trainer.keep_checkpoints=1",
                *reward, f"rollout.dynamic_sampling.enabled={str(arm != 'off').lower()}",
                f"rollout.dynamic_sampling.oversample={'auto' if arm == 'auto' else 1.0}",
                f"rollout.dynamic_sampling.metric={args.reward}", f"rollout.dynamic_sampling.max_rounds={args.max_rounds}"],
                "summary.json", log)
            arms[arm].append(arm_figures(d, G))
    rows = []
    for arm, runs in arms.items():
        first = [r["curve"][0]["accuracy"] for r in runs]
        last = [r["curve"][-1]["accuracy"] for r in runs]
        gain_per_min = [(b - a) / (r["train_s"] / 60) for a, b, r in zip(first, last, runs)]
        (acc, se), (g, gse) = mean_se(last), mean_se(gain_per_min)
        rows.append({"arm": arm, "runs": len(runs), "signal_frac": sum(r["signal_frac"] for r in runs) / len(runs),
                     "gens_per_kept_group": sum(r["generations_per_kept_group"] for r in runs) / len(runs),
                     "prompts_per_step": sum(r["prompts_generated_per_step"] for r in runs) / len(runs),
                     "calls_per_step": sum(r["calls_per_step"] for r in runs) / len(runs),
                     "train_s": sum(r["train_s"] for r in runs) / len(runs), "acc_first": sum(first) / len(first),
                     "acc_last": acc, "acc_last_se": se, "gain_per_train_min": g, "gain_per_train_min_se": gse})
    off = rows[0]  # the first arm given (off by default) is the baseline of the ratios
    for r in rows:
        r["train_s_vs_off"] = r["train_s"] / off["train_s"]
    from bench.common import machine, table
    lines = [f"## Dynamic sampling on conf=rec ({describe_cpu()}; {machine()['date']}; reward {args.reward}, "
             f"{args.steps} steps, seeds {args.seeds}, 300 val images)", "",
             table(rows, ["arm", "runs", "signal_frac", "gens_per_kept_group", "prompts_per_step", "calls_per_step",
                          "train_s",
                          "train_s_vs_off", "acc_first", "acc_last", "acc_last_se", "gain_per_train_min",
                          "gain_per_train_min_se"]), "",
             "signal_frac: share of the trained groups whose metric has spread; gens_per_kept_group: samples "
             "generated per group with spread (G=8 is the floor); calls_per_step: generation calls per step (1 + "
             "refill rounds); gain_per_train_min: val accuracy points gained "
             "(first -> last evaluation) per minute of training steps.", "", "Curves (mean over seeds):", ""]
    for arm, runs in arms.items():
        pts = [(c["step"], sum(r["curve"][i]["train_s"] for r in runs) / len(runs),
                sum(r["curve"][i]["accuracy"] for r in runs) / len(runs)) for i, c in enumerate(runs[0]["curve"])]
        lines.append(f"- {arm}: " + ", ".join(f"step {s} ({t:.0f} s): {a:.3f}" for s, t, a in pts))
    text = "\n".join(lines)
    print(text)
    (out / "dynamic_sampling.md").write_text(text + "\n")
    (out / "dynamic_sampling.json").write_text(json.dumps({"rows": rows, "arms": arms, "log": log}, indent=1))
    return {"rows": rows, "arms": arms}


if __name__ == "__main__":
    main()
