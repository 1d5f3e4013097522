"""The testbed's levers, each with a number: for every variant (synthetic scene, tiny model,
warm-start recipe) build the random model, warm-start it with supervised steps on its own data,
and evaluate REC in domain (accuracy = IoU > 0.5, mean IoU, with standard errors).

    python -m bench.testbed                          # every variant
    python -m bench.testbed --variants current big_84px  # some of them
    python -m bench.testbed --steps 200              # shorter warm starts
    python -m bench.testbed --variants big_84px_rec --grpo-steps 200  # and GRPO over the warm start
    python -m bench.testbed --variants qwen3_one_84px_recovd --ovd-grpo-steps 200  # OVD GRPO over it
    python -m bench.testbed --variants qwen3_one_84px_ovd --ovd-grpo-steps 300     # OVD's own warm start

Each stage is an ``orchestrator.py`` command (printed); finished stages are kept, so an
interrupted run continues (``--fresh`` starts over). Writes ``testbed.md`` / ``testbed.json``
under ``--out``.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import time

from bench.stages import eval_records, prepare_out, run_stage
from bench.rec_stats import constant_box, mean_se


# name -> (scene overrides, model overrides, warm-start overrides)
VARIANTS = {
    "current": ({}, {}, {}),
    "code_alpha": ({"position_code": True, "alpha": 0.75}, {}, {}),
    "code_big": ({"position_code": True, "alpha": 0.75, "side": (28, 56)}, {}, {}),
    "big_shapes": ({"side": (28, 56)}, {}, {}),
    "big_rec": ({"side": (28, 56)}, {}, {"tasks": "rec", "steps": 800}),
    "big_few": ({"side": (28, 56), "shapes": (1, 2)}, {}, {}),
    "big_84px": ({"sizes": (84,), "side": (24, 48), "shapes": (1, 2)}, {}, {}),
    "big_theta100": ({"side": (28, 56)}, {"rope_theta": 100.0}, {}),
    "big_84px_rec": ({"sizes": (84,), "side": (24, 48), "shapes": (1, 2)}, {}, {"tasks": "rec", "steps": 800}),
    "big_84px_800": ({"sizes": (84,), "side": (24, 48), "shapes": (1, 2)}, {}, {"steps": 800}),
    "84px_rec_small": ({"sizes": (84,), "side": (24, 48), "shapes": (1, 2)}, {"size": "small"},
                       {"tasks": "rec", "steps": 800}),
    "84px_rec_1600": ({"sizes": (84,), "side": (24, 48), "shapes": (1, 2)}, {}, {"tasks": "rec", "steps": 1600}),
    # Qwen3-VL's vision tower adds learned absolute position embeddings (Qwen2.5-VL's has only 2D RoPE)
    "qwen3": ({}, {"family": "qwen3_vl"}, {}),
    "qwen3_big_shapes": ({"side": (28, 56)}, {"family": "qwen3_vl"}, {}),
    "qwen3_84px_rec": ({"sizes": (84,), "side": (24, 48), "shapes": (1, 2)}, {"family": "qwen3_vl"},
                       {"tasks": "rec", "steps": 800}),
    # one shape per image: localisation alone; Qwen3-VL's position embeddings at unit scale
    # (models/qwen.py), the lever bench.probe found
    "qwen3_one_84px": ({"sizes": (84,), "side": (24, 48), "shapes": (1, 1)}, {"family": "qwen3_vl"},
                       {"tasks": "rec", "steps": 1000}),
    "qwen3_one_84px_1200": ({"sizes": (84,), "side": (24, 48), "shapes": (1, 1)}, {"family": "qwen3_vl"},
                            {"tasks": "rec", "steps": 1200}),
    "qwen3_one_84px_recovd": ({"sizes": (84,), "side": (24, 48), "shapes": (1, 1)}, {"family": "qwen3_vl"},
                              {"tasks": "rec:ovd", "steps": 1200}),
    # OVD with its own warm start: every row teaches the box and the label (none are REC rows)
    "qwen3_one_84px_ovd": ({"sizes": (84,), "side": (24, 48), "shapes": (1, 1)}, {"family": "qwen3_vl"},
                           {"tasks": "ovd", "steps": 2400}),
    "qwen3_one_84px_ovd_1200": ({"sizes": (84,), "side": (24, 48), "shapes": (1, 1)}, {"family": "qwen3_vl"},
                                {"tasks": "ovd", "steps": 1200}),
    "qwen3_one_84px_ovd_1200_lr6e-3": ({"sizes": (84,), "side": (24, 48), "shapes": (1, 1)}, {"family": "qwen3_vl"},
                                       {"tasks": "ovd", "steps": 1200, "lr": 6e-3}),
    "qwen3_one_84px_ovd_2400_b8": ({"sizes": (84,), "side": (24, 48), "shapes": (1, 1)}, {"family": "qwen3_vl"},
                                   {"tasks": "ovd", "steps": 2400, "batch": 8}),
    "qwen3_two_84px": ({"sizes": (84,), "side": (24, 48), "shapes": (1, 2)}, {"family": "qwen3_vl"},
                       {"tasks": "rec", "steps": 2000}),
}


def distinct_boxes(records: list[dict]) -> int:
    """How many different boxes the greedy answers give (a collapsed policy answers one)."""
    return len({tuple(round(c) for c in r["pred"][0]) for r in records if r["pred"]})


def run_variant(name: str, out: pathlib.Path, steps: int, lr: float, dtype: str, log: list) -> dict:
    from data.scenes import Scene
    from data.synthetic import generate
    from data.tiny_model import build
    scene, model, warm = VARIANTS[name]
    d = out / name
    o = {"steps": steps, "lr": lr, "dtype": dtype, "tasks": "rec:ovd", **warm}
    if (d / "result.json").exists():  # measured by an earlier run of this command with the same recipe
        res = json.loads((d / "result.json").read_text())
        if res["warm"] == o:
            return res
        raise SystemExit(f"{d} holds {name} warm-started with {res['warm']}, not {o}: use another --out or --fresh")
    t0 = time.perf_counter()
    data = d / "data"
    if not (data / "rec_val.jsonl").exists():
        generate(data, seed=0, n_train=2000, n_val=300, n_ood=0, tasks=("rec", "ovd"),
                 spec=Scene(**scene), progress=False)
    base = d / "model"
    if not (base / "BUILD.json").exists():
        build(base, seed=0, **model)
    build_s = time.perf_counter() - t0
    files = ":".join(f"{data}/{t}_{{0}}.jsonl" for t in o["tasks"].split(":"))
    sft = run_stage(f"{name}/sft", out, [
        "mode=sft", f"model.path={base}", "seed=0", f"data.task={o['tasks']}", f"data.synthetic.dir={data}",
        f"data.image_folders={data}", f"data.train_files={files.format('train')}",
        f"data.val_files={files.format('val')}", f"trainer.max_steps={o['steps']}", f"trainer.prompts_per_step={o.get('batch', 16)}",
        "trainer.epochs=100", f"learner.lr={o['lr']}", "learner.lr_schedule=cosine", "learner.warmup_steps=10",
        "learner.beta=0", f"learner.micro_batch_size={o.get('batch', 16)}", "trainer.eval_steps=0", f"learner.dtype={o['dtype']}",
        f"trainer.save_steps={o['steps']}", "trainer.keep_checkpoints=1"], "checkpoints", log)
    hf = sorted((sft / "checkpoints").glob("step_*"))[-1] / "hf"
    ev = run_stage(f"{name}/eval", out, ["mode=eval", "conf=rec", f"model.path={hf}", f"data.synthetic.dir={data}",
                                         f"data.image_folders={data}", f"data.val_files={data}/rec_val.jsonl"],
                   "eval_results.json", log)
    recs = eval_records(ev / "eval_results.json")
    fmt = [float(bool(r["pred"])) for r in recs]  # a box could be read from the answer
    res = {"variant": name, "scene": {k: list(v) if isinstance(v, tuple) else v for k, v in scene.items()},
           "model": model, "warm": o, "build_seconds": round(build_s, 1),
           "warm_seconds": next((x["seconds"] for x in log if x["stage"] == f"{name}/sft"), None),
           "acc": mean_se([float(r["hit"]) for r in recs]), "iou": mean_se([float(r["iou"]) for r in recs]),
           "n": len(recs), "format": sum(fmt) / max(len(fmt), 1)}
    (d / "result.json").write_text(json.dumps(res))
    return res


def run_grpo(name: str, out: pathlib.Path, steps: int, lr: float, log: list, extra: tuple = ()) -> dict:
    """GRPO (conf=rec, G=8, 8 prompts a step, beta 0) over the variant's warm start, evaluated
    greedily on the same 300 val images before and after; returns the deltas."""
    d = out / name
    data, hf = d / "data", sorted((d / "sft" / "checkpoints").glob("step_*"))[-1] / "hf"
    tag = f"grpo_{steps}_lr{lr:g}" + "".join(f"_{o.replace('=', '-').replace('.', '_')}" for o in extra)
    g = run_stage(f"{name}/{tag}", out, [
        "conf=rec", f"model.path={hf}", "seed=0", f"data.synthetic.dir={data}", f"data.image_folders={data}",
        f"data.train_files={data}/rec_train.jsonl", f"data.val_files={data}/rec_val.jsonl", f"learner.lr={lr}",
        "learner.beta=0", "learner.dtype=fp32", "rollout.num_generations=8", "trainer.prompts_per_step=8",
        f"trainer.max_steps={steps}", "trainer.epochs=100", f"trainer.eval_steps={steps}", "eval.train_samples=100000",
        *extra],
        "summary.json", log)
    first = eval_records(g / "eval" / "step_000000.json")
    last = eval_records(g / "eval" / f"step_{steps:06d}.json")
    rows = [json.loads(x) for x in (g / "metrics.jsonl").read_text().splitlines() if x.strip()]
    sampled = [r["reward/rec_iou"] for r in rows if "reward/rec_iou" in r]
    k = max(1, len(sampled) // 10)
    return {"steps": steps, "lr": lr, "overrides": list(extra), "seconds": next((x["seconds"] for x in log if x["stage"] == f"{name}/{tag}"), None),
            "acc": [mean_se([float(r["hit"]) for r in recs]) for recs in (first, last)],
            "iou": [mean_se([float(r["iou"]) for r in recs]) for recs in (first, last)],
            "sampled_iou": [sum(sampled[:k]) / k, sum(sampled[-k:]) / k],
            "distinct": [distinct_boxes(first), distinct_boxes(last)]}


def run_grpo_ovd(name: str, out: pathlib.Path, steps: int, lr: float, log: list) -> dict:
    """GRPO on the variant's OVD rows (conf=ovd: format + odLength, G=8, 8 prompts a step, beta 0)
    over its warm start; val mAP (COCOeval over the 300 val images, greedy) before and after."""
    d = out / name
    data, hf = d / "data", sorted((d / "sft" / "checkpoints").glob("step_*"))[-1] / "hf"
    g = run_stage(f"{name}/ovd_grpo_{steps}_lr{lr:g}", out, [
        "conf=ovd", f"model.path={hf}", "seed=0", f"data.synthetic.dir={data}", f"data.image_folders={data}",
        f"data.train_files={data}/ovd_train.jsonl", f"data.val_files={data}/ovd_val.jsonl", f"learner.lr={lr}",
        "learner.beta=0", "learner.dtype=fp32", "rollout.num_generations=8", "trainer.prompts_per_step=8",
        f"trainer.max_steps={steps}", "trainer.epochs=100", f"trainer.eval_steps={steps}", "eval.train_samples=100000"],
        "summary.json", log)
    first, last = (json.loads((g / "eval" / f"step_{s:06d}.json").read_text())["metrics"] for s in (0, steps))
    return {"steps": steps, "lr": lr, "seconds": next((x["seconds"] for x in log if x["stage"].startswith(f"{name}/ovd_grpo")), None),
            **{k: [first[k], last[k]] for k in ("mAP", "AP50", "boxes_per_answer")}}


def ovd_table(rows: list[dict]) -> str:
    lines = ["OVD GRPO over the warm start (conf=ovd: format + odLength, G=8, 8 prompts a step, beta 0), greedy val, "
             "300 images", "", "| variant | steps | lr | minutes | val mAP before -> after | AP50 before -> after | "
             "boxes per answer |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        g = r["ovd_grpo"]
        lines.append(f"| {r['variant']} | {g['steps']} | {g['lr']:g} | {(g['seconds'] or 0) / 60:.1f} | "
                     f"{g['mAP'][0]:.3f} -> {g['mAP'][1]:.3f} | {g['AP50'][0]:.3f} -> {g['AP50'][1]:.3f} | "
                     f"{g['boxes_per_answer'][0]:.2f} -> {g['boxes_per_answer'][1]:.2f} |")
    return "\n".join(lines)


def grpo_table(rows: list[dict]) -> str:
    lines = ["GRPO over the warm start (conf=rec, G=8, 8 prompts a step, beta 0), REC in domain, greedy, "
             "same 300 val images", "",
             "| variant | steps | lr | overrides | minutes | accuracy before -> after | mean IoU before -> after | "
             "sampled IoU first -> last tenth | distinct boxes before -> after |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        g = r["grpo"]
        (a0, sa0), (a1, sa1) = g["acc"]
        (i0, si0), (i1, si1) = g["iou"]
        lines.append(f"| {r['variant']} | {g['steps']} | {g['lr']:g} | {' '.join(g.get('overrides', [])) or '-'} | "
                     f"{(g['seconds'] or 0) / 60:.1f} | "
                     f"{a0:.3f} -> {a1:.3f} ({a1 - a0:+.3f}) | {i0:.3f} -> {i1:.3f} ({i1 - i0:+.3f}) | "
                     f"{g['sampled_iou'][0]:.3f} -> {g['sampled_iou'][1]:.3f} | "
                     f"{g['distinct'][0]} -> {g['distinct'][1]} |")
    return "\n".join(lines)


def table(rows: list[dict], cpu: str, out: pathlib.Path) -> str:
    base = next((r for r in rows if r["variant"] == "current"), None)
    lines = [f"Warm start of each testbed variant, REC in domain (300 val images); CPU: {cpu}. One box: the "
             "single best constant answer's accuracy (no localisation); distinct: different boxes in the greedy "
             "answers", "",
             "| variant | scene (model) | warm start | minutes | accuracy | one box | distinct | mean IoU | "
             "IoU vs current |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mins = (r["build_seconds"] + (r["warm_seconds"] or 0)) / 60
        ratio = f"{r['iou'][0] / base['iou'][0]:.2f}x" if base and base["iou"][0] > 0 else "-"
        scene = (json.dumps(r["scene"]) if r["scene"] else "default") + (f" ({json.dumps(r['model'])})" if r["model"] else "")
        w = r["warm"]
        floor = constant_box(out / r["variant"] / "data")
        distinct = distinct_boxes(eval_records(out / r["variant"] / "eval" / "eval_results.json"))
        lines.append(f"| {r['variant']} | {scene} | "
                     f"{w['steps']} steps of {w.get('tasks', 'rec:ovd')}, lr {w['lr']:g}, {w['dtype']} | {mins:.1f} | "
                     f"{r['acc'][0]:.3f} ± {r['acc'][1]:.3f} | {floor['acc']:.3f} | {distinct} | "
                     f"{r['iou'][0]:.3f} ± {r['iou'][1]:.3f} | {ratio} |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--steps", type=int, default=400, help="warm-start steps (16 prompts each)")
    ap.add_argument("--lr", type=float, default=3e-3, help="warm-start learning rate")
    ap.add_argument("--dtype", default="fp32", help="learner.dtype of the warm start")
    ap.add_argument("--grpo-steps", type=int, default=0, help="then GRPO for this many steps (0: warm starts only)")
    ap.add_argument("--grpo-lr", type=float, default=1e-4)
    ap.add_argument("--ovd-grpo-steps", type=int, default=0, help="then GRPO on the OVD rows for this many steps")
    ap.add_argument("--grpo-overrides", nargs="*", default=[], help="more config overrides for the GRPO runs")
    ap.add_argument("--out", default="outputs/testbed")
    ap.add_argument("--fresh", action="store_true")
    args = ap.parse_args(argv)
    out = prepare_out(args.out, args.fresh)
    from conf.hardware import describe_cpu
    cpu = describe_cpu()
    log: list[dict] = []
    rows = []
    for name in args.variants:
        rows.append(run_variant(name, out, args.steps, args.lr, args.dtype, log))
        if args.grpo_steps:
            rows[-1] = {**rows[-1], "grpo": run_grpo(name, out, args.grpo_steps, args.grpo_lr, log, tuple(args.grpo_overrides))}
        if args.ovd_grpo_steps:
            rows[-1] = {**rows[-1], "ovd_grpo": run_grpo_ovd(name, out, args.ovd_grpo_steps, args.grpo_lr, log)}
        print(table(rows, cpu, out), flush=True)
    md = table(rows, cpu, out) + ("\n\n" + grpo_table(rows) if args.grpo_steps else "") \
        + ("\n\n" + ovd_table(rows) if args.ovd_grpo_steps else "")
    print(md)
    (out / "testbed.json").write_text(json.dumps({"cpu": cpu, "rows": rows}))
    (out / "testbed.md").write_text(md + "\n")
    return rows


if __name__ == "__main__":
    main()
