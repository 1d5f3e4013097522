"""The learning experiment: from one warm start and the same prompts, continued SFT against GRPO,
each evaluated in domain (``rec_val``) and on out-of-domain splits -- ``rec_val_ood`` (two or three
shapes, relation phrasings never seen) and one split per shift of appearance or geometry
(``data.scenes.SHIFTS``: smaller or larger shapes than any trained, an unseen image size, dark
backgrounds, unseen colours, shapes in the corners) -- as in VLM-R1's RefCOCO vs LISA-Grounding
comparison; optionally OVD GRPO from ``conf=ovd``'s warm start, as shipped and with one lever moved per
arm (``OVD_ARMS``: the reward, the learning rate, dynamic sampling).

    python -m bench.learning                         # REC, 3 seeds, every split (see docs/learning.md for its time)
    python -m bench.learning --seeds 0 --steps 20 --split-images 40 --curve-every 10 --sft-lrs 1e-4   # a quick look
    python -m bench.learning --equal-time            # also SFT for as long as GRPO took (first seed)
    python -m bench.learning --ovd-steps 300         # also OVD from conf=ovd's warm start
    python -m bench.learning --ovd-steps 300 --ovd-seeds 1 --ovd-arms odlength iou giou f1 iou_lr3e-4   # OVD's levers
    python -m bench.learning --legacy --steps 200 --prompts-per-step 4 --ovd-steps 100 --ovd-arms odlength map \
        --out outputs/learning                       # the earlier Qwen2.5-VL testbed (builtin:tiny, default scene)

SFT is given its best chance: its learning rate is swept on the first seed (``--sft-lrs``) and the
one with the best in-domain val accuracy is used for every seed; the sweep is reported. Every stage
is one ``orchestrator.py`` command, printed as it starts, so the experiment is also the recipe for
doing it by hand. A stage whose results already exist is skipped: an interrupted experiment
continues where it stopped (``--fresh`` starts over). Writes, under ``--out``: ``learning.md`` (the
tables), ``learning.json`` (every number) and ``curves_<split>.svg`` (accuracy against step of
either arm, mean and standard-error band over the seeds, with the warm start and the constant-box
floor as lines).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import time

from bench.charts import curve_svg
from bench.ovd_arms import OVD_ARMS, ovd_part, ovd_table
from bench.rec_stats import constant_box, diff_se, mean_se, split_metrics, split_tags
from bench.stages import checkpoint_hf, eval_records, one_process, prepare_out, rows_of, run_stage

class Experiment:
    """The REC stages and where their results are; each stage runs once (``run_stage``)."""

    def __init__(self, args, out: pathlib.Path, log: list):
        import conf
        from data.scenes import SCENES, data_dir_name
        from data.synthetic import generate
        from data.tiny_model import cache_root, resolve_model_path
        self.args, self.out, self.log = args, out, log
        self.scene = ["data.synthetic.scene=default"] if args.legacy else []  # conf=rec: one_shape
        scene_name = "default" if args.legacy else conf.load(["conf=rec"]).data.synthetic.scene
        self.syn = cache_root() / data_dir_name(0, scene_name)
        self.tags = split_tags(args.shifts)
        shifted = out / "shifts"  # the shift splits (deterministic: written again only if missing)
        names = {f"val_{n}" for n in args.shifts}
        if any(not (shifted / f"rec_{n}.jsonl").exists() for n in names):
            generate(shifted, seed=0, n_train=0, n_val=0, n_ood=args.split_images, tasks=("rec",),
                     spec=SCENES[scene_name], shifts=tuple(args.shifts), splits=names, progress=False)
        self.files = [(self.syn / "rec_val.jsonl", self.syn), (self.syn / "rec_val_ood.jsonl", self.syn)] + \
            [(shifted / f"rec_val_{n}.jsonl", shifted) for n in args.shifts]
        self.val_all = [f"data.val_files={':'.join(str(f) for f, _ in self.files)}",
                        f"data.val_image_folders={':'.join(str(d) for _, d in self.files)}"]
        self.val_in = [f"data.val_files={self.files[0][0]}", f"data.val_image_folders={self.syn}"]
        self.warm = resolve_model_path("builtin:tiny" if args.legacy else conf.load(["conf=rec"]).model.path, 0)

    def stage(self, name, overrides, done_file) -> pathlib.Path:
        return run_stage(name, self.out, overrides, done_file, self.log)

    def evaluate(self, name: str, model: pathlib.Path | str, val: list, samples: int | None = None) -> list[dict]:
        """Greedy answers of ``model`` (``mode=eval``) on ``val``; ``samples``: the fixed random subset."""
        cap = [f"eval.max_samples={samples}"] if samples else []
        d = self.stage(name, ["mode=eval", "conf=rec", *self.scene, f"model.path={model}", *val, *cap], "eval_results.json")
        return eval_records(d / "eval_results.json")

    def common(self, seed: int, steps: int) -> list[str]:
        a = self.args
        every = a.curve_every or steps
        return ["conf=rec", *self.scene, f"seed={seed}", f"model.path={self.warm}", f"trainer.max_steps={steps}",
                f"trainer.prompts_per_step={a.prompts_per_step}",
                f"trainer.save_steps={every}", f"trainer.keep_checkpoints={steps // every + 1}"]

    def grpo(self, seed: int, k: int, name: str) -> pathlib.Path:
        a = self.args
        every = a.curve_every or a.steps
        return self.stage(name, [*self.common(seed, a.steps), f"learner.lr={a.grpo_lr}", f"learner.beta={a.beta}",
                                 f"rollout.num_generations={a.generations}", *self.val_all,
                                 f"trainer.max_staleness={k}", f"trainer.eval_steps={every}",
                                 f"eval.train_samples={a.curve_images}"], "summary.json")

    def sft(self, seed: int, lr: float, steps: int, name: str) -> pathlib.Path:
        # epochs never the limit (conf=rec's 10 hold 2,500 steps of 8 prompts; the order does not depend
        # on them); done when the last step's checkpoint is there (an interrupted run is run again)
        return self.stage(name, ["mode=sft", *self.common(seed, steps), f"learner.lr={lr}", "learner.beta=0",
                                 "trainer.epochs=1000"],
                          f"checkpoints/step_{steps:06d}/hf")


def main(argv=None) -> dict:
    from data.scenes import SHIFTS
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=300, help="training steps of each REC arm")
    ap.add_argument("--prompts-per-step", type=int, default=8, help="B (both arms see the same B x steps prompts)")
    ap.add_argument("--generations", type=int, default=8, help="G of GRPO")
    ap.add_argument("--grpo-lr", type=float, default=1e-4)
    ap.add_argument("--sft-lrs", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3],
                    help="SFT learning rates swept on the first seed; the best in-domain val accuracy is used for all")
    ap.add_argument("--beta", type=float, default=0.0, help="KL weight of GRPO")
    ap.add_argument("--shifts", nargs="*", default=list(SHIFTS), choices=list(SHIFTS),
                    help="out-of-domain shift splits evaluated besides rec_val and rec_val_ood")
    ap.add_argument("--split-images", type=int, default=300, help="images of each shift split")
    ap.add_argument("--curve-every", type=int, default=150, help="a curve point every N steps (0: none)")
    ap.add_argument("--curve-images", type=int, default=480,
                    help="the fixed random subset of all val images a curve point is measured on")
    ap.add_argument("--equal-time", action="store_true",
                    help="also SFT (first seed) for as many steps as take GRPO's training time")
    ap.add_argument("--ovd-steps", type=int, default=0, help="training steps of each OVD run (0: skip OVD)")
    ap.add_argument("--ovd-arms", nargs="+", default=["odlength"], choices=list(OVD_ARMS),
                    help="OVD arms: conf=ovd as shipped (odlength) and one lever moved each: the reward "
                         "(map: plain mAP, the box-padding hack; f1; iou; giou), the learning rate, dynamic sampling")
    ap.add_argument("--ovd-seeds", type=int, default=None, help="OVD runs on the first N of --seeds (default: all)")
    ap.add_argument("--staleness", type=int, nargs="+", default=[0],
                    help="trainer.max_staleness of the GRPO arm (the first) and of the arms compared with it")
    ap.add_argument("--legacy", action="store_true",
                    help="the earlier testbed: builtin:tiny (Qwen2.5-VL, REC + OVD warm start) on the default scene, "
                         "for both tasks, instead of conf=rec's and conf=ovd's embedded models")
    ap.add_argument("--out", default="outputs/learning")
    ap.add_argument("--fresh", action="store_true", help="delete --out first")
    ap.add_argument("--subprocess", action="store_true",
                    help="each stage an orchestrator.py process of its own (default: all in this one, on one Ray, "
                         "the engine and learner processes kept from stage to stage)")
    args = ap.parse_args(argv)
    if args.curve_every and args.steps % args.curve_every:
        ap.error("--steps must be a multiple of --curve-every")
    out = prepare_out(args.out, args.fresh)
    with one_process(out, not args.subprocess):
        return run(args, out)


def run(args, out: pathlib.Path) -> dict:
    """Every stage of the experiment (skipping those done), then the tables and curves."""
    t_start = time.perf_counter()
    log: list[dict] = []
    x = Experiment(args, out, log)
    S, tags = args.steps, x.tags
    every = args.curve_every or S
    points = list(range(0, S + 1, every))

    base_records = x.evaluate("base_eval", x.warm, x.val_all)
    results = {"base": split_metrics(base_records, tags), "sft": [], "grpo": [], "curves": {}, "curve": {},
               "floor": floors(x.files, tags), "sft_sweep": {}}
    first = args.seeds[0]
    # SFT's learning rate: swept on the first seed, chosen on in-domain val accuracy
    for lr in args.sft_lrs:
        s = x.sft(first, lr, S, f"sft_rec_s{first}_lr{lr:g}")
        rec = x.evaluate(f"sft_rec_s{first}_lr{lr:g}_val", checkpoint_hf(s, S), x.val_in)
        results["sft_sweep"][f"{lr:g}"] = mean_se([float(r["hit"]) for r in rec])
    sft_lr = max(args.sft_lrs, key=lambda lr: results["sft_sweep"][f"{lr:g}"][0])
    results["sft_lr"] = sft_lr
    print(f"SFT learning rate: {sft_lr:g} (in-domain val accuracy of each: {results['sft_sweep']})", flush=True)

    subset_ids = None
    for seed in args.seeds:
        for k in args.staleness:  # the first is the GRPO arm of the tables; others are compared to it
            name = f"grpo_rec_s{seed}" + (f"_k{k}" if k != args.staleness[0] else "")
            g = x.grpo(seed, k, name)
            final = x.evaluate(f"{name}_eval", checkpoint_hf(g, S), x.val_all)
            results.setdefault(f"grpo_k{k}", []).append(split_metrics(final, tags))
            results["curves"][name] = [{k: r.get(k) for k in ("step", "reward/rec_iou", "reward/rec_format", "accuracy")}
                                       for r in rows_of(g) if "reward/rec_iou" in r]
            if k == args.staleness[0]:
                recs = {p: eval_records(g / "eval" / f"step_{p:06d}.json") for p in points[1:-1]}
                subset_ids = subset_ids or {r["id"] for r in eval_records(g / "eval" / "step_000000.json")}
                recs.update({0: base_records, S: final})
                results["curve"].setdefault("grpo", []).append(
                    {p: split_metrics(recs[p], tags, subset_ids) for p in points})
        g = out / f"grpo_rec_s{seed}"
        results["grpo"] = results[f"grpo_k{args.staleness[0]}"]
        name = f"sft_rec_s{seed}_lr{sft_lr:g}"
        s = x.sft(seed, sft_lr, S, name)
        final = x.evaluate(f"{name}_eval", checkpoint_hf(s, S), x.val_all)
        results["sft"].append(split_metrics(final, tags))
        recs = {p: x.evaluate(f"{name}_eval{p}", checkpoint_hf(s, p), x.val_all, args.curve_images) for p in points[1:-1]}
        recs.update({0: base_records, S: final})
        results["curve"].setdefault("sft", []).append({p: split_metrics(recs[p], tags, subset_ids) for p in points})
        # the two arms saw the same prompts (same seed, B and sampler)
        grpo_ids = [i for r in rows_of(g) for i in r.get("prompt_ids", [])]
        sft_ids = [i for r in rows_of(s) for i in r.get("prompt_ids", [])]
        assert grpo_ids == sft_ids, "the SFT and GRPO arms did not see the same prompts"
    if args.equal_time:
        results["sft_equal_time"] = equal_time(x, [out / f"grpo_rec_s{sd}" for sd in args.seeds],
                                               [out / f"sft_rec_s{sd}_lr{sft_lr:g}" for sd in args.seeds],
                                               first, sft_lr, every, tags)
    if args.ovd_steps:
        ovd_part(args, out, log, results)
    results["stages"] = log
    results["minutes"] = round((time.perf_counter() - t_start) / 60, 1)
    results["args"] = vars(args)
    md = tables(results, args)
    (out / "learning.md").write_text(md + "\n")
    (out / "learning.json").write_text(json.dumps(results))
    charts = write_curves(results, args, out)
    print("\n" + md)
    print(f"\n{results['minutes']} minutes (stages run now: {sum(x['seconds'] for x in log) / 60:.1f}); "
          f"{out / 'learning.md'}; curves: {', '.join(str(c) for c in charts)}")
    return results


def _step_times(run_dir: pathlib.Path) -> list[float]:
    return [r["time/step_s"] for r in rows_of(run_dir) if "time/step_s" in r]


def equal_time_steps(grpo_runs: list[list[float]], sft_runs: list[list[float]], every: int) -> tuple[int, float]:
    """(SFT steps, seconds): the steps SFT takes in a GRPO run's training time, both arms' step times
    pooled over their runs and taken at the median; a multiple of ``every``, never fewer than SFT's own."""
    import statistics
    budget = statistics.median(t for r in grpo_runs for t in r) * sum(map(len, grpo_runs)) / len(grpo_runs)
    sft_step = statistics.median(t for r in sft_runs for t in r)
    return max(max(map(len, sft_runs)), round(budget / sft_step / every) * every), budget


def equal_time(x: Experiment, grpo_dirs: list, sft_dirs: list, seed: int, lr: float, every: int, tags: dict) -> dict:
    """SFT (``seed``) for as long as a GRPO run trains: GRPO's steps x its median step time over SFT's
    median step time, both pooled over the seeds' runs (medians, as the step times of one run drift by
    2x on a shared machine), rounded to the curve interval; evaluated on every split."""
    import statistics
    grpo_t = [_step_times(d) for d in grpo_dirs]
    n, budget = equal_time_steps(grpo_t, [_step_times(d) for d in sft_dirs], every)
    e = x.sft(seed, lr, n, f"sft_rec_s{seed}_lr{lr:g}_steps{n}")
    metrics = split_metrics(x.evaluate(f"sft_rec_s{seed}_lr{lr:g}_steps{n}_eval", checkpoint_hf(e, n), x.val_all), tags)
    took = _step_times(e)
    return {"steps": n, "grpo_train_s": round(budget, 1), "sft_train_s": round(statistics.median(took) * len(took), 1),
            "grpo_train_s_total": round(sum(map(sum, grpo_t)) / len(grpo_t), 1), "sft_train_s_total": round(sum(took), 1),
            "metrics": metrics}


def floors(files: list, tags: dict) -> dict:
    """The constant-box floor of each split (``bench.testbed.constant_box``): the best one box answered
    for every image, found on the split itself."""
    return {split: constant_box(folder, f.name) for split, (f, folder) in zip(tags, files)}


def _pool(arm: list[dict], split: str, key: str) -> list[float]:
    return [v for m in arm for v in m[split][key]]


def _fmt(values: list[float], scale: float = 1.0) -> str:
    m, se = mean_se(values)
    return f"{m * scale:.3f} ± {se * scale:.3f}"


SPLIT_LABELS = {"in": "in domain", "ood": "2-3 shapes, new phrasings", "small": "smaller shapes",
                "large": "larger shapes", "image_size": "unseen image size", "dark_background": "dark background",
                "new_colours": "unseen colours", "corners": "corners"}


def tables(res: dict, args) -> str:
    splits = list(split_tags(args.shifts))
    n_seeds = len(args.seeds)
    head = "| model | " + " | ".join(SPLIT_LABELS.get(s, s) for s in splits) + " |"
    rule = "|---" * (len(splits) + 1) + "|"
    arms = [("warm start (base)", [res["base"]]), (f"continued SFT (lr {res['sft_lr']:g})", res["sft"]),
            ("GRPO", res["grpo"])]
    if res.get("sft_equal_time"):
        e = res["sft_equal_time"]
        arms.append((f"SFT at GRPO's wall clock ({e['steps']} steps, seed {args.seeds[0]})", [e["metrics"]]))
    lines = [f"REC: greedy accuracy (IoU > 0.5), mean ± standard error over {n_seeds} seed(s) x the split's images; "
             f"{args.steps} steps x {args.prompts_per_step} prompts per arm", "", head, rule]
    for label, arm in arms:
        lines.append(f"| {label} | " + " | ".join(_fmt(_pool(arm, s, "hit")) for s in splits) + " |")
    lines.append("| constant-box floor | " + " | ".join(f"{res['floor'][s]['acc']:.3f}" for s in splits) + " |")
    diffs = {s: diff_se(_pool(res["grpo"], s, "hit"), _pool(res["sft"], s, "hit")) for s in splits}
    lines.append("| **GRPO - SFT** (in standard errors) | " + " | ".join(
        f"{100 * d:+.1f} pts ({d / se:+.1f})" if se else f"{100 * d:+.1f} pts" for d, se in diffs.values()) + " |")
    if n_seeds > 1:  # the seeds' spread, which the pooled standard error does not show
        per_seed = {sp: [100 * (mean_se(g[sp]["hit"])[0] - mean_se(f[sp]["hit"])[0]) for g, f in zip(res["grpo"], res["sft"])]
                    for sp in splits}
        lines.append("| GRPO - SFT, each seed (pts; their mean ± standard error) | " + " | ".join(
            ", ".join(f"{v:+.1f}" for v in per_seed[sp]) + " ({:+.1f} ± {:.1f})".format(*mean_se(per_seed[sp]))
            for sp in splits) + " |")
    lines += ["", "Mean IoU, same runs:", "", head, rule]
    for label, arm in arms:
        lines.append(f"| {label} | " + " | ".join(_fmt(_pool(arm, s, "iou")) for s in splits) + " |")
    lines.append("| constant-box floor | " + " | ".join(f"{res['floor'][s]['iou']:.3f}" for s in splits) + " |")
    won = [s for s in splits if s not in ("in", "ood") and diffs[s][1] and diffs[s][0] > 2 * diffs[s][1]]
    d_in, se_in = diffs["in"]
    lines += ["", f"GRPO ahead of SFT by more than two standard errors on {len(won)} of the {len(splits) - 2} shift "
              f"splits ({', '.join(won) or 'none'}; target: at least 2), and in domain by {100 * d_in:+.1f} points "
              f"({d_in / se_in:+.1f} standard errors)." if se_in else ""]
    lines += ["", f"SFT learning-rate sweep (seed {args.seeds[0]}, {args.steps} steps, in-domain val accuracy): " +
              ", ".join(f"lr {lr}: {m:.3f} ± {se:.3f}" for lr, (m, se) in res["sft_sweep"].items())]
    if res.get("sft_equal_time"):
        e = res["sft_equal_time"]
        lines.append(f"Equal wall clock: a GRPO run trained for {e['grpo_train_s']:.0f} s, SFT for {e['steps']} steps, "
                     f"{e['sft_train_s']:.0f} s (median step time x steps; summed, with the machine's pauses: GRPO's mean "
                     f"{e.get('grpo_train_s_total', e['grpo_train_s']):.0f} s and {e.get('sft_train_s_total', e['sft_train_s']):.0f} s).")
    if len(args.staleness) > 1:
        lines += ["", "GRPO at each trainer.max_staleness (same seeds, prompts and steps):", "",
                  "| max_staleness | in-domain acc | in-domain mIoU |", "|---|---|---|"]
        for k in args.staleness:
            arm = res[f"grpo_k{k}"]
            lines.append(f"| {k} | " + " | ".join(_fmt(_pool(arm, "in", m)) for m in ("hit", "iou")) + " |")
        k0, k1 = args.staleness[0], args.staleness[1]
        for m in ("hit", "iou"):
            diff, se = diff_se(_pool(res[f"grpo_k{k0}"], "in", m), _pool(res[f"grpo_k{k1}"], "in", m))
            lines.append(f"max_staleness {k0} - {k1}, in-domain {'accuracy' if m == 'hit' else 'mean IoU'}: "
                         f"{diff:+.3f} ({f'{diff / se:+.1f} standard errors' if se else 'both arms identical'}; "
                         "target: within 2)")
    lines += ovd_table(res, args)
    return "\n".join(lines)


def curve_series(res: dict, arm: str, split: str) -> list[tuple[int, float, float]]:
    """(step, mean, standard error) of ``arm``'s accuracy on ``split`` at each curve point, pooled over
    the seeds and the curve subset's images (none where the subset holds no image of the split: a
    small ``--curve-images``)."""
    per_seed = res["curve"].get(arm, [])
    steps = sorted({int(p) for c in per_seed for p in c})
    points = [(p, *mean_se([v for c in per_seed for v in (c.get(p) or c.get(str(p)))[split]["hit"]])) for p in steps]
    return [pt for pt in points if pt[1] == pt[1]]  # (NaN: no image)


def write_curves(res: dict, args, out: pathlib.Path) -> list[pathlib.Path]:
    """One ``curves_<split>.svg`` per split (none without curve points)."""
    paths = []
    if not res["curve"]:
        return paths
    n = len(args.seeds)
    for split in split_tags(args.shifts):
        series = {"GRPO": curve_series(res, "grpo", split), "SFT": curve_series(res, "sft", split)}
        lines = {"warm start": mean_se(res["base"][split]["hit"])[0], "constant-box floor": res["floor"][split]["acc"]}
        first = res["curve"]["grpo"][0]
        k = len((first.get(0) or first.get("0"))[split]["hit"])
        svg = curve_svg(series, lines, f"REC, {SPLIT_LABELS.get(split, split)}",
                        f"points: {n} seed(s) x a fixed {k} of its images; lines: all of them; SFT lr {res['sft_lr']:g}")
        path = out / f"curves_{split}.svg"
        path.write_text(svg)
        paths.append(path)
    return paths


if __name__ == "__main__":
    main()
