"""Calibrate the loop model on this machine, then check its predictions against real runs.

    python -m bench.calibrate                      # fit the rates, then predict and measure every check row
    python -m bench.calibrate --sizes tiny 30m --steps 4
    python -m bench.calibrate --fit-only           # the rates alone (bench/results/rates.json)

Every number comes from real runs of ``orchestrator.py conf=task/rec`` (Ray, vLLM engines, the
DeepSpeed learner and reward workers) on a model built from a config (``--sizes``), each step's
phases read from its ``metrics.jsonl``; the first step of each run is warm-up and not used.

Fitting (synchronous one-engine runs at five operating points: G, prompts per step and prompt
sharing varied; every timed step is one equation, solved by non-negative least squares): an
engine's generation as ``prompts x prompt tokens / prefill rate + longest completion x decode_step_s
+ completion tokens x decode_seq_s``; the learner's update as ``lm tokens x (1 / train rate + 1 /
forward rate) + images x vision_s_per_image x (1 + forward share) + optimizer_s``, the forward pass
taken as a third of forward + backward (2 against 6 FLOPs per parameter and token) and the images
those the vision tower encodes (one per prompt with prompt sharing, one per sample without);
scoring as seconds per sample; the weight sync as its bytes over its seconds (its latency folded in:
one model size at a time).

Checking: the rows below (1 and 2 engines, synchronous and asynchronous, G 4/8/16, prompt sharing on
and off, dynamic sampling on and off), none of them a fitting point, are each predicted from the
fitted rates and the workload the run actually had (its prompt, mean and longest completion lengths,
its signal fraction) on shared cores (every role on this machine), then measured (the median step);
the table gives predicted against measured step time and each phase, and the error. Goal: within 15%.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import pathlib
import statistics
import tempfile

from bench.common import machine, save, table, timed_run
from bench.loop_model import Layout, Rates, Workload, predict, vision_images

NO_SHARING = "learner.prefix_sharing=false"
FIT_POINTS = [  # (G, prompts per step, overrides): synchronous, one engine
    (4, 1, []), (8, 4, []), (16, 1, []), (2, 4, []), (4, 2, [NO_SHARING])]
CHECKS = {  # name -> (G, prompts per step, overrides)
    "sync G4": (4, 2, []),
    "sync G8": (8, 2, []),
    "sync G16": (16, 2, []),
    "sync G8 no sharing": (8, 2, [NO_SHARING]),
    "sync G8 2 engines": (8, 2, ["rollout.num_engines=2"]),
    "async G8": (8, 2, ["trainer.max_staleness=1"]),
    "async G8 2 engines": (8, 2, ["trainer.max_staleness=1", "rollout.num_engines=2"]),
    "sync G8 dynamic sampling": (8, 2, ["rollout.dynamic_sampling.enabled=true"]),
}
FORWARD_SHARE = 1 / 3  # a forward pass's share of forward + backward
REWARD_WORKERS = 2
SETTINGS = ["trainer.max_staleness=0", f"reward.num_workers={REWARD_WORKERS}"]  # (a check row may override)


def nnls(x: list[list[float]], y: list[float]) -> list[float]:
    """Non-negative least squares for a few columns: the best of the least-squares fits on every
    subset of the columns whose coefficients are all non-negative (exact for a handful of columns)."""
    import numpy as np
    X, Y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    best, best_res = np.zeros(X.shape[1]), float(np.sum(Y ** 2))
    for k in range(1, X.shape[1] + 1):
        for cols in itertools.combinations(range(X.shape[1]), k):
            coef = np.linalg.lstsq(X[:, cols], Y, rcond=None)[0]
            if (coef >= 0).all():
                res = float(np.sum((X[:, cols] @ coef - Y) ** 2))
                if res < best_res:
                    best, best_res = np.zeros(X.shape[1]), res
                    best[list(cols)] = coef
    return [float(c) for c in best]


def _lm_tokens(r: dict, prompt: float) -> float:
    """Language-model tokens of a step's update: counted by the learner with prompt sharing, else
    every sample's prompt and completion."""
    return r.get("learner/lm_tokens") or r["items"] * (prompt + r["completion_len/mean"])


def workload(rows: list[dict], G: int, prompts: int, overrides: list[str], prompt: float | None = None,
             params_b: float = 0.0) -> Workload:
    """The workload the run had: its mean prompt (or ``prompt``: a run without prompt sharing does
    not count them), mean and longest completion lengths and its signal fraction."""
    items = sum(r["items"] for r in rows)
    completion = sum(r["completion_len/mean"] * r["items"] for r in rows) / items
    if prompt is None:
        prompt = (sum(r["learner/lm_tokens_unshared"] for r in rows) - completion * items) / items
    dynamic = "rollout.dynamic_sampling.enabled=true" in overrides
    signal = sum(r.get("sampling/kept_frac", 1.0) for r in rows) / len(rows) if dynamic else 1.0  # of generated
    return Workload(prompts=prompts, G=G, prompt_tokens=prompt, completion_tokens=completion, params_b=params_b,
                    longest_tokens=statistics.mean(r["completion_len/max"] for r in rows),
                    prefix_sharing=NO_SHARING not in overrides, dynamic_sampling=dynamic, signal_frac=signal)


def fit(points: list[tuple[Workload, list[dict]]], sync_bytes: float) -> Rates:
    """Rates from synchronous one-engine runs, one equation per timed step."""
    gen_x, gen_y, tr_x, tr_y, rew, sync_s = [], [], [], [], [], []
    for w, rows in points:
        images = vision_images(w) * (1 + FORWARD_SHARE * (w.beta > 0))
        for r in rows:
            gen_x.append([w.prompts * w.prompt_tokens, r["completion_len/max"], r["completion_len/mean"] * r["items"]])
            gen_y.append(r["time/rollout_s"])
            tr_x.append([_lm_tokens(r, w.prompt_tokens), images, 1.0])
            tr_y.append(r["time/train_s"])
            rew.append(r["time/reward_s"] * REWARD_WORKERS / r["items"])  # (one engine: all of it exposed)
            sync_s.append(r["time/sync_s"])
    prefill, step, seq = nnls(gen_x, gen_y)
    per_token, vision, optimizer = nnls(tr_x, tr_y)
    train_rate = (1 + FORWARD_SHARE) / per_token if per_token else float("inf")  # 1/train + 1/forward
    return Rates(decode_step_s=step, decode_seq_s=seq, prefill_tokens_per_s=1 / prefill if prefill else float("inf"),
                 max_seqs=256, train_tokens_per_s=train_rate, forward_tokens_per_s=train_rate / FORWARD_SHARE,
                 optimizer_s=optimizer, reward_s_per_sample=statistics.median(rew),
                 sync_bytes_per_s=sync_bytes / statistics.median(sync_s), sync_latency_s=0.0, vision_s_per_image=vision)


def measured(rows: list[dict]) -> dict:
    """Each phase's median over the timed steps."""
    return {k: statistics.median(r[f"time/{k}_s"] for r in rows) for k in ("step", "rollout", "reward", "train", "sync")}


def measure(size: str, steps: int, new_tokens: int, checks: list[str], tmp: pathlib.Path, syn: pathlib.Path) -> dict:
    """The real runs of one model size: the fitting points' and the check rows' timed metric rows."""
    from data.tiny_model import build
    model = str(build(tmp / size, seed=0, size=size))
    record = {"size": size, "params": json.loads((pathlib.Path(model) / "BUILD.json").read_text())["parameters"],
              "cores": os.cpu_count(), "fit": [], "checks": {}}
    for i, (G, prompts, over) in enumerate(FIT_POINTS):
        print(f"{size} fit: G={G}, {prompts} prompts {' '.join(over)} ...", flush=True)
        record["fit"].append(timed_run(model, syn, tmp / f"{size}-fit{i}", steps, prompts, G, new_tokens,
                                       [*SETTINGS, *over]))
    for name in checks:
        G, prompts, over = CHECKS[name]
        print(f"{size} check: {name} ...", flush=True)
        try:
            record["checks"][name] = timed_run(model, syn, tmp / f"{size}-{name.replace(' ', '_')}", steps, prompts, G,
                                               new_tokens, [*SETTINGS, *over])
        except SystemExit as e:  # one failed row is reported; the others go on
            print(f"  {name}: {str(e)[:400]}", flush=True)
            record["checks"][name] = None
    return record


def evaluate(record: dict) -> tuple[dict, list[dict]]:
    """Fit the rates on a record's fitting runs and predict its check rows: (rates row, check rows)."""
    size = record["size"]
    runs = [(G, n, over, rows) for (G, n, over), rows in zip(FIT_POINTS, record["fit"])]
    shared = [workload(r, G, n, over) for G, n, over, r in runs if NO_SHARING not in over]
    prompt_tokens = statistics.mean(w.prompt_tokens for w in shared)  # (every run has the same prompts)
    sync_bytes = runs[0][3][-1]["sync/bytes"]
    params_b = sync_bytes / Workload.bytes_per_param / 1e9
    rates = fit([(workload(r, G, n, over, prompt_tokens), r) for G, n, over, r in runs], sync_bytes)
    out = []
    for name, r in record["checks"].items():
        if r is None:
            out.append({"size": size, "row": name, "critical_path": "run failed"})
            continue
        G, prompts, over = CHECKS[name]
        w = workload(r, G, prompts, over, prompt_tokens, params_b=params_b)
        p = predict(w, rates, Layout(engines=2 if "rollout.num_engines=2" in over else 1, learner_ranks=1,
                                     reward_workers=REWARD_WORKERS, shared_cores=record["cores"],
                                     staleness=1 if "trainer.max_staleness=1" in over else 0))
        m = measured(r)
        out.append({"size": size, "row": name, "step_pred": p.step_s, "step_meas": m["step"],
                    "error_%": 100 * (p.step_s - m["step"]) / m["step"],
                    "gen_pred": p.generate_s, "gen_meas": m["rollout"], "train_pred": p.train_s,
                    "train_meas": m["train"], "sync_pred": p.sync_s, "sync_meas": m["sync"],
                    "critical_path": " > ".join(p.critical_path)})
    return {"size": size, "params": record["params"], "sync_bytes": sync_bytes, **rates.__dict__}, out


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["tiny"], help="models built from a config: tiny, 30m, ...")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per run (one runs before, one after)")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--fit-only", action="store_true")
    ap.add_argument("--checks", nargs="+", choices=list(CHECKS), default=list(CHECKS))
    ap.add_argument("--replay", metavar="JSON", help="fit and predict again from the runs a former calibration "
                    "saved (bench/results/calibrate_runs.json), running nothing")
    a = ap.parse_args(argv)
    from conf.hardware import describe_cpu
    if a.replay:
        saved = json.loads(pathlib.Path(a.replay).read_text())
        records = [{"cores": saved["machine"]["cores"], **r} for r in saved["rows"]]
        where = f"{saved['machine']['cpu']} ({saved['machine']['flags']}), {saved['machine']['date']}"
    else:
        from data.synthetic import generate
        records, where = [], f"{describe_cpu()}, {machine()['date']}"
        with tempfile.TemporaryDirectory(prefix="calibrate") as tmp:
            tmp = pathlib.Path(tmp)
            generate(tmp / "syn", seed=0, n_train=64, n_val=4, n_ood=4, progress=False)
            for size in a.sizes:
                records.append(measure(size, a.steps, a.max_new_tokens, [] if a.fit_only else a.checks, tmp,
                                       tmp / "syn"))
                print(f"saved {save('calibrate_runs', records)}")
    rates, rows = [], []
    for record in records:
        got, checked = evaluate(record)
        rates.append(got)
        rows += checked
        print(f"\n## Rates ({where}; {record['size']}, {record['params'] / 1e6:.1f}M parameters)\n")
        print(table([{"rate": k, "value": v} for k, v in got.items() if k not in ("size", "params")], ["rate", "value"]))
    print(f"saved {save('rates', rates)}")
    if not rows:
        return []
    print(f"\n## Loop model against real runs ({where}; the median of each run's timed steps)\n")
    print(table(rows, ["size", "row", "step_pred", "step_meas", "error_%", "gen_pred", "gen_meas", "train_pred",
                       "train_meas", "sync_pred", "sync_meas", "critical_path"]))
    within = sum(abs(r.get("error_%", 100)) <= 15 for r in rows)
    print(f"\n{within} of {len(rows)} rows within 15% of the measured step time")
    print(f"saved {save('calibrate', rows)}")
    return rows


if __name__ == "__main__":
    main()
