"""A reward hack and its trigger, in real runs: OVD GRPO on the localisation testbed with and
without ``conf=ovd``'s default trigger set.

    python -m bench.hack_trigger [--steps 150] [--sft-steps 400] [--out outputs/hack_trigger] [--subprocess]

The policy is the REC warm start of ``conf=rec`` (``builtin:tiny-qwen3-vl-one-shape``) taught the
OVD answer format on the one-shape scene (``--sft-steps`` supervised steps). GRPO with VLM-R1's OVD
rewards (format + odLength; lr 1e-4, beta 0) then finds the hack this testbed shows: 28% of its
OVD rows have no target and are answered "None" correctly, while boxes on the others earn little,
so the policy learns to answer None everywhere (``hack/none_frac``: None where the image has a
target). Arms: ``reward.triggers=[]`` against the default set, whose ``none_collapse`` trigger
switches the count term (``ovd_count``) on when that share stays above 0.3 for 3 steps. Both are
evaluated on all 300 val images every ``--steps`` / 2 steps. A stage whose results exist is not
rerun (``--fresh`` starts over). The stages run in this process on one Ray (``bench.stages.one_process``;
``--subprocess``: a process each). Writes ``--out``/hack_trigger.{md,json}.
"""
from __future__ import annotations

import argparse
import json

from bench.stages import one_process, prepare_out, rows_of, run_stage

EVAL_KEYS = ("eval/mAP", "eval/AP50", "eval/recall@0.5", "eval/boxes_per_answer")


def windows(rows: list[dict], size: int) -> list[dict]:
    """Means of the hack signal, boxes per answer and reward over windows of ``size`` steps."""
    steps = [r for r in rows if "hack/none_frac" in r]
    out = []
    for i in range(0, len(steps), size):
        w = steps[i:i + size]
        out.append({"steps": f"{w[0]['step']}-{w[-1]['step']}",
                    **{k: sum(r[k] for r in w) / len(w) for k in ("hack/none_frac", "boxes/pred_per_answer", "reward/mean")},
                    "reward/ovd_count weight": w[-1].get("rule/ovd_count/weight", "")})
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--sft-steps", type=int, default=400)
    ap.add_argument("--window", type=int, default=15)
    ap.add_argument("--out", default="outputs/hack_trigger")
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--subprocess", action="store_true",
                    help="run each stage as an orchestrator.py process of its own (default: all in this process, "
                         "one Ray, the engine and learner processes kept from stage to stage)")
    args = ap.parse_args(argv)
    out = prepare_out(args.out, args.fresh)
    with one_process(out, not args.subprocess):
        return _run(args, out)


def _run(args, out) -> dict:
    from bench.common import machine, table
    from conf.hardware import describe_cpu
    from data.tiny_model import resolve_model_path
    log: list[dict] = []
    scene = ["conf=ovd", "data.synthetic.scene=one_shape", "learner.beta=0", "learner.dtype=fp32"]
    sft = run_stage("ovd_sft", out, [
        "mode=sft", *scene, f"model.path={resolve_model_path('builtin:tiny-qwen3-vl-one-shape', 0)}",
        f"trainer.max_steps={args.sft_steps}", "trainer.prompts_per_step=16", "learner.micro_batch_size=16",
        "trainer.epochs=100", "learner.lr=1e-3", "learner.lr_schedule=cosine", "learner.warmup_steps=10",
        "trainer.eval_steps=0", "trainer.save_steps=0"], "checkpoints", log)
    hf = sorted((sft / "checkpoints").glob("step_*"))[-1] / "hf"
    arms = {}
    for arm, extra in (("no triggers", ["reward.triggers=[]"]), ("default triggers", [])):
        d = run_stage(arm.replace(" ", "_"), out, [
            *scene, f"model.path={hf}", "learner.lr=1e-4", "rollout.num_generations=8", "trainer.prompts_per_step=8",
            f"trainer.max_steps={args.steps}", f"trainer.eval_steps={args.steps // 2}", "eval.train_samples=300",
            f"trainer.save_steps={args.steps}", "trainer.keep_checkpoints=1", "trainer.epochs=10", *extra],
            "summary.json", log)
        rows = rows_of(d)
        arms[arm] = {"windows": windows(rows, args.window),
                     "evals": [{"step": r["step"], **{k: r[k] for k in EVAL_KEYS}} for r in rows if "eval/mAP" in r],
                     "events": [f"step {r['step']}: {e}" for r in rows for e in r.get("rule_events", [])]}
    lines = [f"## A reward hack and its trigger (OVD on conf=rec's one-shape scene; {describe_cpu()}; {machine()['date']}; "
             f"{args.steps} GRPO steps, 300 val images)", ""]
    for arm, a in arms.items():
        lines += [f"### {arm}", "", "events: " + ("; ".join(a["events"]) or "none"), "",
                  table(a["windows"], ["steps", "hack/none_frac", "boxes/pred_per_answer", "reward/mean",
                                       "reward/ovd_count weight"]), "",
                  table(a["evals"], ["step", *EVAL_KEYS]), ""]
    text = "\n".join(lines)
    print(text)
    (out / "hack_trigger.md").write_text(text + "\n")
    (out / "hack_trigger.json").write_text(json.dumps({"arms": arms, "log": log}, indent=1))
    return arms


if __name__ == "__main__":
    main()
