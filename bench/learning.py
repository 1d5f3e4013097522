"""The learning experiment: from one warm start and the same prompts, continued SFT against GRPO,
each evaluated in-domain (``rec_val``) and out-of-domain (``rec_val_ood``), as in VLM-R1's
RefCOCO vs LISA-Grounding comparison; then OVD trained with ``ovd_odlength`` against ``ovd_map``
alone (VLM-R1's box-padding hack).

    python -m bench.learning                         # the full experiment (see docs/learning.md for its time)
    python -m bench.learning --seeds 0 --steps 20 --ovd-steps 10   # a quick look
    python -m bench.learning --ovd-steps 0           # REC only
    python -m bench.learning --legacy --steps 200 --prompts-per-step 4 --ovd-steps 100 --ovd-arms odlength map \
        --out outputs/learning                       # the earlier Qwen2.5-VL testbed (builtin:tiny, default scene)

Every stage is one ``orchestrator.py`` command, printed as it starts, so the experiment is also
the recipe for doing it by hand. A stage whose results already exist is skipped: an interrupted
experiment continues where it stopped (``--fresh`` starts over). Writes, under ``--out``:
``learning.md`` (the tables), ``learning.json`` (every number) and ``learning.png`` (curves).
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import shutil
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
QUIET = ["trainer.report=false", "wandb.mode=disabled", "cluster.include_dashboard=false"]


def prepare_out(out: str, fresh: bool) -> pathlib.Path:
    """An experiment's output folder (under the repo), emptied first with ``fresh``; the repo is put
    on the import path, as the stages run ``orchestrator.py`` from it."""
    path = (REPO / out).resolve()
    if fresh:
        shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    return path


def run_stage(name: str, out: pathlib.Path, overrides: list[str], done_file: str, log: list) -> pathlib.Path:
    """``orchestrator.py overrides`` into ``out/name`` unless ``done_file`` exists there already."""
    run_dir = out / name
    if (run_dir / done_file).exists():
        print(f"[{name}] done already ({run_dir / done_file})", flush=True)
        return run_dir
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, "orchestrator.py", *overrides, f"trainer.output_dir={run_dir}", *QUIET]
    print(f"[{name}] {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    with open(out / f"{name}.log", "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0 or not (run_dir / done_file).exists():
        raise SystemExit(f"[{name}] failed (exit {proc.returncode}); see {out / f'{name}.log'}")
    log.append({"stage": name, "seconds": round(time.perf_counter() - t0, 1)})
    print(f"[{name}] {log[-1]['seconds']} s", flush=True)
    return run_dir


def split_metrics(records: list[dict]) -> dict:
    """REC accuracy / mean IoU per split (ids ``rec-val-N`` / ``rec-val_ood-N``), with the
    per-image values kept for standard errors across seeds."""
    out = {}
    for split, tag in (("in", "-val-"), ("ood", "-val_ood-")):
        recs = [r for r in records if tag in r["id"]]
        out[split] = {"hit": [float(r["hit"]) for r in recs], "iou": [float(r["iou"]) for r in recs]}
    return out


def mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    m = sum(values) / n
    var = sum((v - m) ** 2 for v in values) / max(n - 1, 1)
    return m, math.sqrt(var / n)


def eval_records(path: pathlib.Path) -> list[dict]:
    return json.loads(path.read_text())["records"]


def rows_of(run_dir: pathlib.Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--steps", type=int, default=300, help="training steps of each REC arm")
    ap.add_argument("--prompts-per-step", type=int, default=8, help="B (both arms see the same B x steps prompts)")
    ap.add_argument("--generations", type=int, default=8, help="G of GRPO")
    ap.add_argument("--grpo-lr", type=float, default=1e-4)
    ap.add_argument("--sft-lr", type=float, default=1e-4)
    ap.add_argument("--beta", type=float, default=0.0, help="KL weight of GRPO")
    ap.add_argument("--warm-steps", type=int, default=0,
                    help="extra REC supervised steps on top of the embedded warm start before the arms (0: as is)")
    ap.add_argument("--ovd-steps", type=int, default=300, help="training steps of each OVD run (0: skip OVD)")
    ap.add_argument("--ovd-arms", nargs="+", default=["odlength"], choices=["odlength", "map"],
                    help="OVD rewards: format + odLength (conf=ovd), and format + plain mAP (the box-padding hack)")
    ap.add_argument("--staleness", type=int, nargs="+", default=[0],
                    help="trainer.max_staleness of the GRPO arm (the first) and of the arms compared with it")
    ap.add_argument("--legacy", action="store_true",
                    help="the earlier testbed: builtin:tiny (Qwen2.5-VL, REC + OVD warm start) on the default scene, "
                         "for both tasks, instead of conf=rec's and conf=ovd's embedded models")
    ap.add_argument("--out", default="outputs/learning")
    ap.add_argument("--fresh", action="store_true", help="delete --out first")
    args = ap.parse_args(argv)
    out = prepare_out(args.out, args.fresh)
    t_start = time.perf_counter()
    import conf
    from data.tiny_model import cache_root, resolve_model_path
    rec = "conf=rec"
    scene = ["data.synthetic.scene=default"] if args.legacy else []  # conf=rec / conf=ovd: one_shape
    from data.scenes import data_dir_name
    syn = cache_root() / data_dir_name(0, "default" if args.legacy else "one_shape")
    val2 = f"data.val_files={syn}/rec_val.jsonl:{syn}/rec_val_ood.jsonl"
    log: list[dict] = []
    S, B = args.steps, args.prompts_per_step

    warm = resolve_model_path("builtin:tiny" if args.legacy else conf.load(["conf=rec"]).model.path, 0)
    if args.warm_steps:
        d = run_stage("warm", out, ["mode=sft", rec, *scene, f"model.path={warm}", f"trainer.max_steps={args.warm_steps}",
                                    "trainer.prompts_per_step=16", "learner.micro_batch_size=16", "learner.lr=1e-3",
                                    "learner.lr_schedule=cosine", "seed=100"], "checkpoints", log)
        warm = str(sorted((d / "checkpoints").glob("step_*"))[-1] / "hf")
    # OVD's own warm start (conf=ovd's model), or the shared one of the earlier testbed
    ovd_warm = warm if args.legacy else resolve_model_path(conf.load(["conf=ovd"]).model.path, 0) if args.ovd_steps else None
    base_dir = run_stage("base_eval", out, ["mode=eval", rec, *scene, f"model.path={warm}", val2], "eval_results.json", log)
    results = {"base": split_metrics(eval_records(base_dir / "eval_results.json")), "sft": [], "grpo": [], "curves": {}}

    for seed in args.seeds:
        common = [rec, *scene, f"seed={seed}", f"model.path={warm}", f"trainer.max_steps={S}",
                  f"trainer.prompts_per_step={B}", f"trainer.save_steps={S}", "trainer.keep_checkpoints=1"]
        for k in args.staleness:  # the first is the GRPO arm of the tables; others are compared to it
            name = f"grpo_rec_s{seed}" + (f"_k{k}" if k != args.staleness[0] else "")
            g = run_stage(name, out, [*common, f"learner.lr={args.grpo_lr}", f"learner.beta={args.beta}",
                                      f"rollout.num_generations={args.generations}", val2, f"trainer.max_staleness={k}",
                                      f"trainer.eval_steps={S}", "eval.train_samples=100000"], "summary.json", log)
            results.setdefault(f"grpo_k{k}", []).append(split_metrics(eval_records(g / "eval" / f"step_{S:06d}.json")))
            results["curves"][name] = [{k: r.get(k) for k in ("step", "reward/rec_iou", "reward/rec_format", "accuracy")}
                                       for r in rows_of(g) if "reward/rec_iou" in r]
        g = out / f"grpo_rec_s{seed}"
        results["grpo"] = results[f"grpo_k{args.staleness[0]}"]
        s = run_stage(f"sft_rec_s{seed}", out, ["mode=sft", *common, f"learner.lr={args.sft_lr}", "learner.beta=0"],
                      "checkpoints", log)
        hf = sorted((s / "checkpoints").glob("step_*"))[-1] / "hf"
        e = run_stage(f"sft_rec_s{seed}_eval", out, ["mode=eval", rec, *scene, f"model.path={hf}", val2],
                      "eval_results.json", log)
        results["sft"].append(split_metrics(eval_records(e / "eval_results.json")))
        # the two arms saw the same prompts (same seed, B and sampler)
        grpo_ids = [i for r in rows_of(g) for i in r.get("prompt_ids", [])]
        sft_ids = [i for r in rows_of(s) for i in r.get("prompt_ids", [])]
        assert grpo_ids == sft_ids, "the SFT and GRPO arms did not see the same prompts"

        if args.ovd_steps:
            ovd = ["conf=ovd", *scene, f"seed={seed}", f"model.path={ovd_warm}", f"trainer.max_steps={args.ovd_steps}",
                   f"trainer.prompts_per_step={B}", f"learner.lr={args.grpo_lr}", f"learner.beta={args.beta}",
                   f"trainer.save_steps={args.ovd_steps}", "trainer.keep_checkpoints=1",
                   f"trainer.eval_steps={args.ovd_steps}", "eval.train_samples=100000"]
            arms = {"odlength": ["reward.funcs.ovd_map=0"],  # ovd_map logged, weight 0
                    "map": ["reward.funcs.ovd_odlength=0", "reward.funcs.ovd_map=1"]}
            for name, funcs in ((a, arms[a]) for a in args.ovd_arms):
                d = run_stage(f"ovd_{name}_s{seed}", out, [*ovd, *funcs], "summary.json", log)
                first = json.loads((d / "eval" / "step_000000.json").read_text())["metrics"]
                last = json.loads((d / "eval" / f"step_{args.ovd_steps:06d}.json").read_text())["metrics"]
                results["curves"][f"ovd_{name}_s{seed}"] = [
                    {k: r.get(k) for k in ("step", "reward/ovd_odlength", "reward/ovd_map", "boxes/pred_per_answer",
                                            "boxes/gt_per_answer")} for r in rows_of(d) if "reward/ovd_map" in r]
                results.setdefault(f"ovd_{name}", []).append({"eval_first": first, "eval_last": last})

    results["stages"] = log
    results["minutes"] = round((time.perf_counter() - t_start) / 60, 1)
    results["args"] = vars(args)
    md = tables(results, args)
    (out / "learning.md").write_text(md + "\n")
    (out / "learning.json").write_text(json.dumps(results))
    plot(results, out / "learning.png")
    print("\n" + md)
    print(f"\n{results['minutes']} minutes (stages run now: {sum(x['seconds'] for x in log) / 60:.1f}); "
          f"{out / 'learning.md'}, {out / 'learning.png'}")
    return results


def _pool(arm: list[dict], split: str, key: str) -> list[float]:
    return [v for m in arm for v in m[split][key]]


def _fmt(values: list[float], scale: float = 1.0) -> str:
    m, se = mean_se(values)
    return f"{m * scale:.3f} ± {se * scale:.3f}"


def tables(res: dict, args) -> str:
    n_seeds = len(args.seeds)
    lines = [f"REC: accuracy (IoU > 0.5) and mean IoU, greedy, mean ± standard error over "
             f"{n_seeds} seed(s) x images; {args.steps} steps x {args.prompts_per_step} prompts per arm",
             "", "| model | in-domain acc | in-domain mIoU | out-of-domain acc | out-of-domain mIoU |", "|---|---|---|---|---|"]
    arms = [("warm start (base)", [res["base"]]), ("continued SFT", res["sft"]), ("GRPO", res["grpo"])]
    for label, arm in arms:
        lines.append(f"| {label} | " + " | ".join(_fmt(_pool(arm, s, k)) for s in ("in", "ood") for k in ("hit", "iou")) + " |")
    d = lambda arm, s, k: mean_se(_pool(arm, s, k))[0]  # noqa: E731
    lines += ["", f"GRPO - base, in-domain: accuracy {100 * (d(res['grpo'], 'in', 'hit') - d([res['base']], 'in', 'hit')):+.1f} "
              f"points (target +15), mean IoU {d(res['grpo'], 'in', 'iou') - d([res['base']], 'in', 'iou'):+.3f} (target +0.10)",
              f"GRPO - SFT, out-of-domain: accuracy {100 * (d(res['grpo'], 'ood', 'hit') - d(res['sft'], 'ood', 'hit')):+.1f} "
              f"points, mean IoU {d(res['grpo'], 'ood', 'iou') - d(res['sft'], 'ood', 'iou'):+.3f} (target > 0)"]
    if len(args.staleness) > 1:
        lines += ["", "GRPO at each trainer.max_staleness (same seeds, prompts and steps):", "",
                  "| max_staleness | in-domain acc | in-domain mIoU | out-of-domain acc | out-of-domain mIoU |",
                  "|---|---|---|---|---|"]
        for k in args.staleness:
            arm = res[f"grpo_k{k}"]
            lines.append(f"| {k} | " + " | ".join(_fmt(_pool(arm, s, m)) for s in ("in", "ood") for m in ("hit", "iou")) + " |")
        k0, k1 = args.staleness[0], args.staleness[1]
        for s, m in (("in", "hit"), ("in", "iou")):
            a, b = _pool(res[f"grpo_k{k0}"], s, m), _pool(res[f"grpo_k{k1}"], s, m)
            diff = mean_se(a)[0] - mean_se(b)[0]
            se = math.sqrt(mean_se(a)[1] ** 2 + mean_se(b)[1] ** 2)
            lines.append(f"max_staleness {k0} - {k1}, in-domain {'accuracy' if m == 'hit' else 'mean IoU'}: "
                         f"{diff:+.3f} ({f'{diff / se:+.1f} standard errors' if se else 'both arms identical'}; "
                         "target: within 2)")
    ovd = [a for a in ("odlength", "map") if res.get(f"ovd_{a}")]
    if ovd:
        n = len(res[f"ovd_{ovd[0]}"])
        lines += ["", f"OVD: GRPO for {args.ovd_steps} steps from {'builtin:tiny' if args.legacy else 'conf=ovd'}'s warm start; sampled answers (mean of the "
                  f"first / last 10 steps, over {n} seed(s)); greedy on the val images before / after (each seed's "
                  "value, comma-separated)", "",
                  "| rewards | boxes per answer (sampled) | ground-truth boxes | ovd_odlength (sampled) | ovd_map (sampled) "
                  "| val mAP | val AP50 | val recall@0.5 | val boxes per answer |", "|---|---|---|---|---|---|---|---|---|"]
        for name in ovd:
            curves = [c for k, c in res["curves"].items() if k.startswith(f"ovd_{name}_s")]
            def fl(key):  # first-10 / last-10 mean over seeds
                a = [sum(r[key] for r in c[:10]) / len(c[:10]) for c in curves]
                b = [sum(r[key] for r in c[-10:]) / len(c[-10:]) for c in curves]
                return f"{sum(a) / len(a):.3f} -> {sum(b) / len(b):.3f}"
            ev = res[f"ovd_{name}"]
            seeds = lambda key, when, f=".3f": ", ".join(format(e[when][key], f) for e in ev)  # noqa: E731
            label = "format + ovd_odlength" if name == "odlength" else "format + ovd_map"
            lines.append(f"| {label} | {fl('boxes/pred_per_answer')} | {fl('boxes/gt_per_answer')} | "
                         f"{fl('reward/ovd_odlength')} | {fl('reward/ovd_map')} | " +
                         " | ".join(f"{seeds(k, 'eval_first')} -> {seeds(k, 'eval_last')}"
                                    for k in ("mAP", "AP50", "recall@0.5")) +
                         f" | {seeds('boxes_per_answer', 'eval_first', '.2f')} -> {seeds('boxes_per_answer', 'eval_last', '.2f')} |")
    return "\n".join(lines)


def _smooth(xs: list[float], k: int = 10) -> list[float]:
    return [sum(xs[max(0, i - k + 1):i + 1]) / len(xs[max(0, i - k + 1):i + 1]) for i in range(len(xs))]


def plot(res: dict, path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [("REC GRPO: sampled IoU reward", "grpo_rec", "reward/rec_iou"),
              ("OVD: sampled boxes per answer", "ovd_", "boxes/pred_per_answer"),
              ("OVD: sampled ovd_odlength", "ovd_", "reward/ovd_odlength"),
              ("OVD: sampled ovd_map", "ovd_", "reward/ovd_map")]
    panels = [p for p in panels if any(n.startswith(p[1]) and rows for n, rows in res["curves"].items())]  # skipped runs: no panel
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(5 * max(len(panels), 1), 3.6), squeeze=False)
    axes = axes[0]
    for ax, (title, prefix, key) in zip(axes, panels):
        for name, rows in res["curves"].items():
            if name.startswith(prefix) and rows:
                ax.plot([r["step"] for r in rows], _smooth([r[key] for r in rows]), label=name)
        ax.set_title(title + " (10-step mean)", fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
