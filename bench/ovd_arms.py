"""OVD GRPO from ``conf=ovd``'s warm start, as shipped and with one lever moved per arm, and its table
(``python -m bench.learning --ovd-steps 300 --ovd-arms ...``)."""
from __future__ import annotations

import json
import pathlib

from bench.stages import rows_of, run_stage


# OVD arms: conf=ovd as shipped (format + ovd_odlength, the hack triggers on) with one lever moved.
# Every arm logs ovd_odlength and ovd_map (weight 0 where they are not trained on) for the table.
_OVD_ONLY = ["reward.funcs.ovd_odlength=0", "reward.funcs.ovd_map=0"]
OVD_ARMS = {
    "odlength": ("format + ovd_odlength (conf=ovd)", ["reward.funcs.ovd_map=0"]),
    "map": ("format + ovd_map (no length penalty)", ["reward.funcs.ovd_odlength=0", "reward.funcs.ovd_map=1"]),
    "f1": ("format + ovd_f1", [*_OVD_ONLY, "reward.funcs.ovd_f1=1"]),
    "iou": ("format + ovd_iou", [*_OVD_ONLY, "reward.funcs.ovd_iou=1"]),
    "giou": ("format + ovd_giou", [*_OVD_ONLY, "reward.funcs.ovd_giou=1"]),
    "iou_odlength": ("format + ovd_iou + ovd_odlength", ["reward.funcs.ovd_map=0", "reward.funcs.ovd_iou=1"]),
    "iou_lr3e-4": ("format + ovd_iou, lr 3e-4", [*_OVD_ONLY, "reward.funcs.ovd_iou=1", "learner.lr=3e-4"]),
    "iou_dynamic": ("format + ovd_iou, dynamic sampling", [*_OVD_ONLY, "reward.funcs.ovd_iou=1",
                                                          "rollout.dynamic_sampling.enabled=true",
                                                          "rollout.dynamic_sampling.metric=ovd_iou"]),
    "odlength_dynamic": ("format + ovd_odlength, dynamic sampling", ["reward.funcs.ovd_map=0",
                                                                   "rollout.dynamic_sampling.enabled=true",
                                                                   "rollout.dynamic_sampling.metric=ovd_odlength"]),
    "odlength_g16": ("format + ovd_odlength, G=16", ["reward.funcs.ovd_map=0", "rollout.num_generations=16"]),
    "odlength_lr3e-4": ("format + ovd_odlength, lr 3e-4", ["reward.funcs.ovd_map=0", "learner.lr=3e-4"]),
    "odlength_lr1e-3": ("format + ovd_odlength, lr 1e-3", ["reward.funcs.ovd_map=0", "learner.lr=1e-3"]),
}


def ovd_part(args, out: pathlib.Path, log: list, results: dict) -> None:
    """OVD GRPO from conf=ovd's warm start (or the earlier testbed's), one run per seed and arm."""
    import conf
    from data.tiny_model import resolve_model_path
    scene = ["data.synthetic.scene=default"] if args.legacy else []
    ovd_warm = resolve_model_path("builtin:tiny" if args.legacy else conf.load(["conf=ovd"]).model.path, 0)
    B = args.prompts_per_step
    for seed in args.seeds[:args.ovd_seeds]:
        ovd = ["conf=ovd", *scene, f"seed={seed}", f"model.path={ovd_warm}", f"trainer.max_steps={args.ovd_steps}",
               f"trainer.prompts_per_step={B}", f"learner.lr={args.grpo_lr}", f"learner.beta={args.beta}",
               f"trainer.save_steps={args.ovd_steps}", "trainer.keep_checkpoints=1",
               f"trainer.eval_steps={args.ovd_steps}", "eval.train_samples=100000"]
        for name in args.ovd_arms:
            d = run_stage(f"ovd_{name}_s{seed}", out, [*ovd, *OVD_ARMS[name][1]], "summary.json", log)
            first = json.loads((d / "eval" / "step_000000.json").read_text())["metrics"]
            last = json.loads((d / "eval" / f"step_{args.ovd_steps:06d}.json").read_text())["metrics"]
            results["curves"][f"ovd_{name}_s{seed}"] = [
                {k: r.get(k) for k in ("step", "reward/ovd_odlength", "reward/ovd_map", "boxes/pred_per_answer",
                                        "boxes/gt_per_answer")} for r in rows_of(d) if "reward/ovd_map" in r]
            results.setdefault(f"ovd_{name}", []).append({"eval_first": first, "eval_last": last})


def ovd_table(res: dict, args) -> list[str]:
    """The OVD arms' table lines (none without OVD results): sampled answers over the first / last 10
    steps, greedy val metrics before / after, val mAP against the warm start's."""
    ovd = [a for a in OVD_ARMS if res.get(f"ovd_{a}")]
    if not ovd:
        return []
    n = len(res[f"ovd_{ovd[0]}"])
    lines = ["", f"OVD: GRPO for {args.ovd_steps} steps from {'builtin:tiny' if args.legacy else 'conf=ovd'}'s warm start; sampled answers (mean of the "
              f"first / last 10 steps, over {n} seed(s)); greedy on the val images before / after (each seed's "
              "value, comma-separated)", "",
              "| rewards | boxes per answer (sampled) | ground-truth boxes | ovd_odlength (sampled) | ovd_map (sampled) "
              "| val mAP | x warm start | val AP50 | val recall@0.5 | val boxes per answer |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name in ovd:
        curves = [c for k, c in res["curves"].items() if k.startswith(f"ovd_{name}_s")]

        def fl(key):  # first-10 / last-10 mean over seeds
            a = [sum(r[key] for r in c[:10]) / len(c[:10]) for c in curves]
            b = [sum(r[key] for r in c[-10:]) / len(c[-10:]) for c in curves]
            return f"{sum(a) / len(a):.3f} -> {sum(b) / len(b):.3f}"
        ev = res[f"ovd_{name}"]
        seeds = lambda key, when, f=".3f": ", ".join(format(e[when][key], f) for e in ev)  # noqa: E731
        label = OVD_ARMS[name][0]
        first_map = sum(e["eval_first"]["mAP"] for e in ev)
        gain = f"{sum(e['eval_last']['mAP'] for e in ev) / first_map:.1f}x" if first_map else "-"
        lines.append(f"| {label} | {fl('boxes/pred_per_answer')} | {fl('boxes/gt_per_answer')} | "
                     f"{fl('reward/ovd_odlength')} | {fl('reward/ovd_map')} | " +
                     " | ".join(f"{seeds(k, 'eval_first')} -> {seeds(k, 'eval_last')}" +
                                (f" | {gain}" if k == "mAP" else "") for k in ("mAP", "AP50", "recall@0.5")) +
                     f" | {seeds('boxes_per_answer', 'eval_first', '.2f')} -> {seeds('boxes_per_answer', 'eval_last', '.2f')} |")
    return lines
