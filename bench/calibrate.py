"""Calibrate the loop model on this machine, then check its predictions against real runs.

    python -m bench.calibrate                      # fit the rates, then predict and measure every check row
    python -m bench.calibrate --size 30m --steps 3
    python -m bench.calibrate --fit-only           # the rates alone (bench/results/rates.json)

Every number comes from real runs of ``orchestrator.py conf=task/rec`` (Ray, vLLM engines, the
DeepSpeed learner and reward workers) on a model built from a config (``--size``), each step's
phases read from its ``metrics.jsonl``; the first step of each run is warm-up and not used.

Fitting (synchronous runs at three operating points, G and prompts per step varied): an engine's
generation time is fitted as ``prompts x prompt tokens / prefill rate + completion tokens x
(decode_step_s + decode_seq_s x sequences)``, the learner's update as ``lm tokens x (1 / train rate
+ 1 / forward rate) + optimizer_s`` with the forward pass taken as a third of forward + backward
(2 against 6 FLOPs per parameter and token), scoring as seconds per sample, the weight sync as its
bytes over its seconds (its latency folded in: one model size).

Checking: the rows below (1 and 2 engines, synchronous and asynchronous, G 4/8/16, prompt sharing on
and off, dynamic sampling on and off) are each predicted from the fitted rates and the workload the
run actually had (its prompt and completion lengths, its signal fraction), then measured; the table
gives predicted against measured step time and each phase, and the error. Goal: within 15%.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import tempfile

from bench.common import machine, save, table, timed_run
from bench.loop_model import Layout, Rates, Workload, predict

FIT_POINTS = [  # (G, prompts per step): synchronous, one engine
    (4, 2), (8, 2), (16, 1)]
CHECKS = {  # name -> overrides (besides G and prompts)
    "sync G4": (4, 2, []),
    "sync G8": (8, 2, []),
    "sync G16": (16, 2, []),
    "sync G8 no sharing": (8, 2, ["learner.prefix_sharing=false"]),
    "sync G8 2 engines": (8, 2, ["rollout.num_engines=2"]),
    "async G8": (8, 2, ["trainer.max_staleness=1"]),
    "async G8 2 engines": (8, 2, ["trainer.max_staleness=1", "rollout.num_engines=2"]),
    "sync G8 dynamic sampling": (8, 2, ["rollout.dynamic_sampling.enabled=true"]),
}
FORWARD_SHARE = 1 / 3  # a forward pass's share of forward + backward
REWARD_WORKERS = 2
SETTINGS = ["trainer.max_staleness=0", f"reward.num_workers={REWARD_WORKERS}"]  # (a check row may override)


def workload(rows: list[dict], G: int, prompts: int, overrides: list[str], prompt: float | None = None,
             params_b: float = 0.0) -> Workload:
    """The workload the run had: its mean prompt (or ``prompt``: a run without prompt sharing does
    not count them) and completion lengths and its signal fraction."""
    items = sum(r["items"] for r in rows)
    completion = sum(r["completion_len/mean"] * r["items"] for r in rows) / items
    if prompt is None:
        prompt = (sum(r["learner/lm_tokens_unshared"] for r in rows) - completion * items) / items
    dynamic = "rollout.dynamic_sampling.enabled=true" in overrides
    signal = sum(r.get("sampling/kept_frac", 1.0) for r in rows) / len(rows) if dynamic else 1.0  # of generated
    return Workload(prompts=prompts, G=G, prompt_tokens=prompt, completion_tokens=completion, params_b=params_b,
                    prefix_sharing="learner.prefix_sharing=false" not in overrides,
                    dynamic_sampling=dynamic, signal_frac=signal)


def fit(points: list[tuple[Workload, list[dict]]], sync_bytes: float) -> Rates:
    """Rates from synchronous one-engine runs (non-negative least squares by clipping)."""
    import numpy as np
    gen_x, gen_y, tr_x, tr_y, rew = [], [], [], [], []
    for w, rows in points:
        for r in rows:
            c = r["completion_len/mean"]
            gen_x.append([w.prompts * w.prompt_tokens, c, c * w.prompts * w.G])
            gen_y.append(r["time/rollout_s"])
            tr_x.append([r["learner/lm_tokens"], 1.0])
            tr_y.append(r["time/train_s"])
            rew.append(r["time/reward_s"] * REWARD_WORKERS / r["items"])  # (one engine: all of it exposed)
    g = np.clip(np.linalg.lstsq(np.array(gen_x), np.array(gen_y), rcond=None)[0], 1e-9, None)
    t = np.clip(np.linalg.lstsq(np.array(tr_x), np.array(tr_y), rcond=None)[0], 1e-9, None)
    per_token = t[0]  # = 1/train + 1/forward, forward = train / FORWARD_SHARE
    train_rate = (1 + FORWARD_SHARE) / per_token
    sync_s = float(np.mean([r["time/sync_s"] for _, rows in points for r in rows]))
    return Rates(decode_step_s=float(g[1]), decode_seq_s=float(g[2]), prefill_tokens_per_s=float(1 / g[0]),
                 max_seqs=256, train_tokens_per_s=float(train_rate), forward_tokens_per_s=float(train_rate / FORWARD_SHARE),
                 optimizer_s=float(t[1]), reward_s_per_sample=float(np.mean(rew)),
                 sync_bytes_per_s=sync_bytes / sync_s, sync_latency_s=0.0)


def measured(rows: list[dict]) -> dict:
    n = len(rows)
    return {k: sum(r[f"time/{k}_s"] for r in rows) / n for k in ("step", "rollout", "reward", "train", "sync")}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="tiny", help="model built from a config: tiny, 30m, ...")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per run (one runs before, one after)")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--fit-only", action="store_true")
    ap.add_argument("--checks", nargs="+", choices=list(CHECKS), default=list(CHECKS))
    a = ap.parse_args(argv)
    from data.synthetic import generate
    from data.tiny_model import build
    rows = []
    with tempfile.TemporaryDirectory(prefix="calibrate") as tmp:
        tmp = pathlib.Path(tmp)
        syn = tmp / "syn"
        generate(syn, seed=0, n_train=64, n_val=4, n_ood=4, progress=False)
        model = str(build(tmp / a.size, seed=0, size=a.size))
        params = json.loads((pathlib.Path(model) / "BUILD.json").read_text())["parameters"]
        points = []
        for i, (G, prompts) in enumerate(FIT_POINTS):
            print(f"fit: G={G}, {prompts} prompts ...", flush=True)
            r = timed_run(model, syn, tmp / f"fit{i}", a.steps, prompts, G, a.max_new_tokens, SETTINGS)
            points.append((workload(r, G, prompts, []), r))
        sync_bytes = points[-1][1][-1]["sync/bytes"]
        prompt_tokens = sum(w.prompt_tokens for w, _ in points) / len(points)  # (every run has the same prompts)
        rates = fit(points, sync_bytes)
        from conf.hardware import describe_cpu
        print(f"\n## Rates ({describe_cpu()}, {machine()['date']}; {a.size}, {params / 1e6:.1f}M parameters)\n")
        print(table([{"rate": k, "value": v} for k, v in rates.__dict__.items()], ["rate", "value"]))
        out = save("rates", [{"size": a.size, "params": params, "sync_bytes": sync_bytes, **rates.__dict__}])
        print(f"saved {out}")
        if a.fit_only:
            return []
        for name in a.checks:
            G, prompts, over = CHECKS[name]
            print(f"check: {name} ...", flush=True)
            try:
                r = timed_run(model, syn, tmp / name.replace(" ", "_"), a.steps, prompts, G, a.max_new_tokens,
                              [*SETTINGS, *over])
            except SystemExit as e:  # one failed row is reported; the others go on
                print(f"  {name}: {str(e)[:400]}", flush=True)
                rows.append({"row": name, "critical_path": "run failed"})
                continue
            w = workload(r, G, prompts, over, None if "learner/lm_tokens_unshared" in r[0] else prompt_tokens,
                         params_b=sync_bytes / Workload.bytes_per_param / 1e9)
            engines = 2 if "rollout.num_engines=2" in over else 1
            p = predict(w, rates, Layout(engines=engines, learner_ranks=1, reward_workers=REWARD_WORKERS,
                                         staleness=1 if "trainer.max_staleness=1" in over else 0))
            m = measured(r)
            rows.append({"row": name, "step_pred": p.step_s, "step_meas": m["step"],
                         "error_%": 100 * (p.step_s - m["step"]) / m["step"],
                         "gen_pred": p.generate_s, "gen_meas": m["rollout"], "train_pred": p.train_s,
                         "train_meas": m["train"], "sync_pred": p.sync_s, "sync_meas": m["sync"],
                         "critical_path": " > ".join(p.critical_path)})
            print(f"  predicted {p.step_s:.3f} s, measured {m['step']:.3f} s ({rows[-1]['error_%']:+.1f}%)", flush=True)
    print(f"\n## Loop model against real runs ({describe_cpu()}, {machine()['date']}; {a.size}; "
          f"{a.steps} timed steps per run, {a.max_new_tokens} new tokens)\n")
    print(table(rows, ["row", "step_pred", "step_meas", "error_%", "gen_pred", "gen_meas", "train_pred", "train_meas",
                       "sync_pred", "sync_meas", "critical_path"]))
    within = sum(abs(r.get("error_%", 100)) <= 15 for r in rows)
    print(f"\n{within} of {len(rows)} rows within 15% of the measured step time")
    print(f"saved {save('calibrate', rows)}")
    return rows


if __name__ == "__main__":
    main()
