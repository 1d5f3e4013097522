"""End to end: GRPO training samples per second of this project against TRL's GRPOTrainer.

    pip install -r bench/requirements.txt            # TRL, for this benchmark only
    python -m bench.e2e                              # sizes 30m and 400m
    python -m bench.e2e --sizes tiny 30m --steps 4 --prompts 2 --generations 4 --max-new-tokens 48
    python -m bench.e2e --sizes 30m --variants async sync      # this project's loops only, against TRL
    python -m bench.e2e --sizes tiny --variants sync sync-eager   # the compiled engine against the eager one
    python -m bench.e2e --precision auto fp32        # both sides at auto's precision, then both at fp32

Identical work on both sides: the same random Qwen2.5-VL built from a config, the same synthetic
REC prompts and images in the same order, G samples per prompt, B prompts per step, the same
completion cap, number of steps, learning rate, KL weight and rewards (this project's
``rec_format`` + ``rec_iou``, handed to TRL as reward functions), and the same precision: each
``--precision`` runs both sides at it, ``auto`` meaning what this project's ``auto`` picks on the
CPU at hand (bf16 where it computes bf16 natively, fp32 elsewhere) -- which is also what a TRL user
would switch on (``GRPOConfig(bf16=True)`` with the model loaded in bf16). TRL is used through its
documented API (``GRPOConfig(use_cpu=True)``, HF ``generate``); a subclass only times its
generation and reward calls. The first step of each system is warm-up and is not counted. This
project's engine runs as the training recipes run it (``rollout.enforce_eager=auto``: compiled where
torch.compile can build; the ``sync-eager`` row runs base.yaml's eager engine); the ``engine`` column
says which.
Reports samples/s (completions trained per second), the ratio, and each system's time split:
generation, reward, training (forward/backward/optimizer incl. reference log-probs), sync
(weights to the engines; none in TRL, which generates with the training model) and other.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time

from bench.common import machine, save, table, timed_run

REPO = pathlib.Path(__file__).resolve().parents[1]


VARIANTS = {  # this project's rows: name -> overrides (the defaults are dtype/threads auto, prefix sharing on)
    # the engine as the training recipes run it (conf/recipe/*.yaml: rollout.enforce_eager=auto, compiled
    # where torch.compile can build; its start-up falls in the untimed warm-up step)
    "async": ["trainer.max_staleness=1", "rollout.enforce_eager=auto"],
    "sync": ["trainer.max_staleness=0", "rollout.enforce_eager=auto"],
    "sync-eager": ["trainer.max_staleness=0", "rollout.enforce_eager=true"],  # base.yaml's engine (short runs)
    # the defaults before asynchronous training: bf16 engine whatever the CPU, one thread per role,
    # no prompt sharing, the old-log-prob-free on-policy loss, torch's foreach AdamW, the eager engine,
    # vLLM's 128-token KV blocks on CPU (no prefill shared between a prompt's samples)
    "old-defaults": ["trainer.max_staleness=0", "rollout.dtype=bfloat16", "learner.dtype=fp32", "rollout.cpu_threads=1",
                     "learner.cpu_threads=1", "learner.prefix_sharing=false", "learner.off_policy=none",
                     "learner.adam_impl=foreach", "rollout.enforce_eager=true", "rollout.block_size=128"],
}


def precision_of(choice: str) -> str:
    """``bf16`` or ``fp32``: ``choice`` itself, or for ``auto`` what this project's learner would
    pick on this machine (``conf.hardware.resolve_dtype``)."""
    from conf.hardware import resolve_dtype
    return resolve_dtype(choice, "learner")[0]


def steps_for(size: str, asked: int | None) -> int:
    """Timed steps at ``size``: ``asked``, or enough that a step's jitter does not decide the ratio
    (a 1M step takes ~0.7 s on 2 cores: 4 steps gave 0.91x and 1.19x TRL in two runs)."""
    return asked if asked is not None else (20 if size == "tiny" else 3)


def engine_of(system: str) -> str:
    """How a row generates: ``compiled`` / ``eager`` vLLM engine (``rollout.enforce_eager`` as the
    variant sets it, ``auto`` resolved on this machine), or TRL's ``HF generate``."""
    if not system.startswith("ours:"):
        return "HF generate"
    from conf.hardware import resolve_eager
    value = next(o.split("=", 1)[1] for o in VARIANTS[system.split(":", 1)[1]] if o.startswith("rollout.enforce_eager="))
    return "eager" if resolve_eager(value if value == "auto" else value == "true")[0] else "compiled"


def dtype_overrides(precision: str) -> list[str]:
    """Both of this project's roles at ``precision`` (bf16 | fp32)."""
    return [f"rollout.dtype={'bfloat16' if precision == 'bf16' else 'float32'}", f"learner.dtype={precision}"]


def run_ours(model_dir: str, syn: pathlib.Path, out: pathlib.Path, a, overrides: list[str]) -> dict:
    """This project's timed steps (``bench.common.timed_run``), summed and split by phase."""
    rows = timed_run(model_dir, syn, out, a.steps, a.prompts, a.generations, a.max_new_tokens,
                     [f"learner.lr={a.lr}", f"learner.beta={a.beta}", "reward.num_workers=1", *overrides])
    total = sum(r["time/step_s"] for r in rows)
    split = {k: sum(r[f"time/{k}_s"] for r in rows) for k in ("rollout", "reward", "train", "sync")}
    summary = json.loads((out / "summary.json").read_text())
    lm = [r for r in rows if "learner/lm_tokens" in r]
    return {"seconds": total, "samples": sum(r["items"] for r in rows), "generate": split["rollout"],
            "reward": split["reward"], "train": split["train"], "sync": split["sync"],
            "other": total - sum(split.values()), "completion_tokens": sum(r["completion_len/mean"] * r["items"] for r in rows),
            "util_%": 100 * summary["cpu_utilisation"] if summary.get("cpu_utilisation") else None,
            "lm_token_share": (sum(r["learner/lm_tokens"] for r in lm) / sum(r["learner/lm_tokens_unshared"] for r in lm))
            if lm else 1.0}


def run_trl(model_dir: str, syn: pathlib.Path, out: pathlib.Path, a) -> dict:
    """TRL's GRPOTrainer in this process (it is single-process on CPU)."""
    import torch
    from datasets import Dataset
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from models import model_input_size
    from data.loaders import load_prompts
    from data.prompts import messages
    from rewards import REGISTRY
    processor = AutoProcessor.from_pretrained(model_dir)
    prompts, _ = load_prompts(str(syn / "rec_train.jsonl"), str(syn), "rec")
    n = a.prompts * (a.steps + 1)
    rows = []
    for p in prompts[:n]:
        w, h = p.image_sizes[0]
        msgs = messages(p.question, 1, "rec")  # an image placeholder; TRL puts the image in it
        rows.append({"prompt": msgs, "image": Image.open(p.images[0]).convert("RGB"), "solution": p.solution,
                     "image_size": [w, h], "input_size": list(model_input_size(processor.image_processor, w, h))})
    data = Dataset.from_list(rows)

    def reward(name):
        def fn(completions, solution, image_size, input_size, **_):
            out = []
            for c, s, size, isize in zip(completions, solution, image_size, input_size):
                text = c[0]["content"] if isinstance(c, list) else c
                out.append(REGISTRY[name].evaluate(text, s, image_size=tuple(size), input_size=tuple(isize))[0])
            return out
        fn.__name__ = name
        return fn

    times = {"generate": 0.0, "reward": 0.0, "steps": []}

    def timed(key, fn, *args, **kw):
        """``fn(*args, **kw)``, its time added to ``times[key]`` once the warm-up step is over."""
        t0 = time.perf_counter()
        try:
            return fn(*args, **kw)
        finally:
            if times["steps"]:
                times[key] += time.perf_counter() - t0

    class Timed(GRPOTrainer):
        def _generate(self, *args, **kw):
            return timed("generate", super()._generate, *args, **kw)

        def _calculate_rewards(self, *args, **kw):
            return timed("reward", super()._calculate_rewards, *args, **kw)

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times["steps"].append(time.perf_counter() - self.t0)

    bf16 = a.precision == "bf16"  # as a TRL user turns bf16 on: the model loaded in it, autocast on
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.bfloat16 if bf16 else torch.float32)
    cfg = GRPOConfig(output_dir=str(out), use_cpu=True, per_device_train_batch_size=a.prompts * a.generations,
                     num_generations=a.generations, max_completion_length=a.max_new_tokens, max_steps=a.steps + 1,
                     learning_rate=a.lr, beta=a.beta, temperature=1.0, logging_steps=1, report_to="none",
                     save_strategy="no", bf16=bf16, shuffle_dataset=False, seed=0, dataloader_num_workers=0)
    trainer = Timed(model=model, reward_funcs=[reward("rec_format"), reward("rec_iou")], args=cfg,
                    train_dataset=data, processing_class=processor, callbacks=[StepClock()])
    trainer.train()
    steps = times["steps"][1:]
    total = sum(steps)
    return {"seconds": total, "samples": len(steps) * a.prompts * a.generations, "generate": times["generate"],
            "reward": times["reward"], "train": total - times["generate"] - times["reward"], "sync": 0.0, "other": 0.0}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["30m", "400m"])
    ap.add_argument("--steps", type=int, default=None,
                    help="timed steps (one more runs first as warm-up); default: 20 at tiny (~0.7 s a step: "
                         "fewer are noise), 3 otherwise")
    ap.add_argument("--prompts", type=int, default=2, help="B: prompts per step")
    ap.add_argument("--generations", type=int, default=8, help="G (VLM-R1: 8)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--beta", type=float, default=0.04)
    ap.add_argument("--system", choices=["both", "ours", "trl"], default="both")
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["async", "sync", "old-defaults"],
                    help="this project's configurations to run (sync: the default on one CPU machine)")
    ap.add_argument("--precision", nargs="+", choices=["auto", "bf16", "fp32"], default=["auto"],
                    help="run both systems at each: auto = what this project's auto picks on this CPU "
                         "(bf16 with native bf16, else fp32); old-defaults keeps its own mixed precision")
    a = ap.parse_args(argv)
    from data.synthetic import generate
    from data.tiny_model import build
    rows = []
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="e2e") as tmp:
        tmp = pathlib.Path(tmp)
        syn = tmp / "syn"
        most = max(steps_for(size, a.steps) for size in a.sizes) + 2  # (this project's runs take 2 more)
        generate(syn, seed=0, n_train=max(64, a.prompts * most), n_val=4, n_ood=4, progress=False)
        precisions = list(dict.fromkeys(precision_of(c) for c in a.precision))  # auto resolved, once each
        for size in a.sizes:
            model_dir = str(build(tmp / size, seed=0, size=size))
            params = json.loads((pathlib.Path(model_dir) / "BUILD.json").read_text())["parameters"]
            for k, precision in enumerate(precisions):
                at = argparse.Namespace(**{**vars(a), "precision": precision, "steps": steps_for(size, a.steps)})
                variants = [v for v in a.variants if v != "old-defaults" or k == 0]  # its own precision: once
                systems = [f"ours:{v}" for v in variants] if a.system != "trl" else []
                systems += ["trl"] if a.system != "ours" else []
                res = {}
                for system in systems:
                    print(f"[{size}, {precision}] {system} ...", flush=True)
                    if system.startswith("ours:"):
                        v = system.split(":", 1)[1]
                        over = VARIANTS[v] if v == "old-defaults" else [*VARIANTS[v], *dtype_overrides(precision)]
                        res[system] = run_ours(model_dir, syn, tmp / f"ours-{v}-{size}-{precision}", at, over)
                    else:  # a fresh process keeps TRL's threads and memory apart from the next run
                        res[system] = _trl_subprocess(model_dir, syn, tmp / f"trl-{size}-{precision}", at)
                rows += [{**r, "steps": at.steps} for r in _rows(res, size, params, precision)]
    from conf.hardware import describe_cpu
    print(f"\n## End to end vs TRL ({describe_cpu()}, {machine()['date']}): "
          f"B={a.prompts}, G={a.generations}, {a.max_new_tokens} new tokens\n")
    print(table(rows, ["size", "params_M", "precision", "system", "engine", "steps", "samples_per_s", "x_TRL", "x_sync", "util_%",
                       "lm_tokens", "generate_%", "reward_%", "train_%", "sync_%", "other_%", "gen_s/sample",
                       "train_s/sample", "gen_x_TRL", "train_x_TRL"]))
    print("\nlm_tokens: language-model tokens the learner computes per step, as a share of the same batch without "
          "prompt sharing. Asynchronous rows: generate/reward run beside training, so train_% is only the wait for "
          "the learner after them; util_%: CPU time of every process / (wall time x cores) over the training steps. "
          "precision: both systems' (x_TRL compares rows of one precision); old defaults: bf16 engine, fp32 learner. "
          "engine: vLLM compiled (rollout.enforce_eager=auto, as the recipes run it) or eager (base.yaml's, for short runs). "
          "gen_/train_s/sample: seconds of each phase per sample; gen_/train_x_TRL: TRL's over ours (synchronous rows).")
    print(f"\nsaved {save('e2e', rows)}")
    return rows


def _rows(res: dict, size: str, params: int, precision: str) -> list[dict]:
    """Table rows of one size and precision: samples/s, time split, ratios to TRL and to ``sync``."""
    def sps(system):
        return res[system]["samples"] / res[system]["seconds"]
    rows = []
    for system, r in res.items():
        name = f"this project, {system.split(':', 1)[1]}" if system.startswith("ours:") else "TRL GRPOTrainer"
        row = {"size": size, "params_M": params / 1e6, "system": name, "samples_per_s": sps(system),
               "precision": "bf16/fp32" if system == "ours:old-defaults" else precision, "engine": engine_of(system),
               "util_%": r.get("util_%"), "lm_tokens": r.get("lm_token_share"),
               **{f"{k}_%": 100 * r[k] / r["seconds"] for k in ("generate", "reward", "train", "sync", "other")},
               "gen_s/sample": r["generate"] / r["samples"], "train_s/sample": r["train"] / r["samples"]}
        if "trl" in res and system != "trl":
            row["x_TRL"] = sps(system) / sps("trl")
            if not system.startswith("ours:async"):  # (asynchronous: generation beside training, train = the wait)
                row["gen_x_TRL"] = res["trl"]["generate"] / res["trl"]["samples"] / row["gen_s/sample"]
                row["train_x_TRL"] = res["trl"]["train"] / res["trl"]["samples"] / row["train_s/sample"]
        if "ours:sync" in res and system.startswith("ours:") and system != "ours:sync":
            row["x_sync"] = sps(system) / sps("ours:sync")
        rows.append(row)
    return rows


def _trl_subprocess(model_dir, syn, out, a) -> dict:
    args = json.dumps({"model_dir": model_dir, "syn": str(syn), "out": str(out), **vars(a)})
    proc = subprocess.run([sys.executable, "-c", "import sys; from bench.e2e import _trl_entry; _trl_entry(sys.argv[1])",
                           args], cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"the TRL run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _trl_entry(args_json: str) -> None:
    d = json.loads(args_json)
    a = argparse.Namespace(**{k: v for k, v in d.items() if k not in ("model_dir", "syn", "out")})
    res = run_trl(d["model_dir"], pathlib.Path(d["syn"]), pathlib.Path(d["out"]), a)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
