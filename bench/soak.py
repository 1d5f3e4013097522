"""Soak: a long GRPO run whose memory per process must stay flat and whose step time must not drift.

    python -m bench.soak                     # 200 steps of conf=ovd on the embedded default
    python -m bench.soak --steps 50 conf=rec trainer.prompts_per_step=2

Runs ``orchestrator.py`` (extra arguments are passed to it) and samples, every ``--every`` seconds,
the resident memory of the driver and every process under it (Ray's GCS and raylet, the rollout
engine, learner and reward-worker actors), keyed by process name. After ``--warmup`` steps each
process's resident memory is the baseline; the table shows its largest value after that and the
growth (goal: within 10%). Step time: mean of the first and the last quarter after warm-up (goal:
no drift). Prints a markdown table and saves ``bench/results/soak.json``.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import threading
import time

from bench.common import machine, save, table
from conf.hardware import describe_cpu

REPO = pathlib.Path(__file__).resolve().parents[1]


def _step(metrics: pathlib.Path) -> int:
    """The last step written to ``metrics.jsonl`` (0 before the first)."""
    try:
        lines = metrics.read_text().splitlines()
    except OSError:
        return 0
    steps = [json.loads(x).get("step", 0) for x in lines[-5:] if x.strip()]
    return max(steps, default=0)


def sample(pid: int, metrics: pathlib.Path, every: float, out: list, stop: threading.Event) -> None:
    """Append (step, process name, pid, rss MiB) for the driver and its descendants until ``stop``."""
    import psutil
    root = psutil.Process(pid)
    while not stop.is_set():
        step = _step(metrics)
        try:
            procs = [root] + root.children(recursive=True)
        except psutil.NoSuchProcess:
            return
        for p in procs:
            try:
                out.append((step, p.name(), p.pid, p.memory_info().rss / 2**20))
            except psutil.Error:
                pass
        stop.wait(every)


def analyse(samples: list, rows: list[dict], warmup: int) -> tuple[list[dict], dict]:
    """Per-process memory growth after warm-up, and step-time drift."""
    by, names = {}, {}
    for step, name, pid, rss in samples:
        if step >= warmup:  # a Ray worker's name shows its current task (ray::Learner.train_step): key by pid
            by.setdefault(pid, []).append(rss)
            names.setdefault(pid, name.split(".")[0])
    mem = []
    for pid, values in sorted(by.items(), key=lambda kv: names[kv[0]]):
        name = names[pid]
        if len(values) < 3 or values[0] < 50:  # short-lived helpers and tiny processes say nothing
            continue
        mem.append({"process": name, "pid": pid, "rss_after_warmup_MiB": values[0], "rss_max_MiB": max(values),
                    "rss_last_MiB": values[-1], "growth_pct": 100 * (max(values) / values[0] - 1)})
    times = [r["time/step_s"] for r in rows if "time/step_s" in r][warmup:]
    q = max(1, len(times) // 4)
    drift = {"steps_timed": len(times), "first_quarter_s": sum(times[:q]) / q, "last_quarter_s": sum(times[-q:]) / q}
    drift["drift_pct"] = 100 * (drift["last_quarter_s"] / drift["first_quarter_s"] - 1)
    return mem, drift


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20, help="steps before the memory baseline is taken")
    ap.add_argument("--every", type=float, default=2.0, help="seconds between memory samples")
    args, extra = ap.parse_known_args(argv)
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="soak") as tmp:
        out = pathlib.Path(tmp) / "run"
        cmd = [sys.executable, "orchestrator.py", *(extra or ["conf=ovd"]), f"trainer.max_steps={args.steps}",
               "trainer.epochs=100", f"trainer.output_dir={out}", "trainer.report=false", "wandb.mode=disabled",
               "cluster.include_dashboard=false", "trainer.eval_steps=0", f"trainer.save_steps={max(args.steps // 4, 1)}"]
        print(" ".join(cmd[1:]), flush=True)
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        samples, stop = [], threading.Event()
        thread = threading.Thread(target=sample, args=(proc.pid, out / "metrics.jsonl", args.every, samples, stop))
        thread.start()
        code = proc.wait()
        stop.set()
        thread.join()
        if code != 0:
            raise SystemExit(f"the soak run failed (exit {code}); rerun the command above to see why")
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    mem, drift = analyse(samples, rows, args.warmup)
    minutes = (time.perf_counter() - t0) / 60
    print(f"## Soak: {args.steps} steps in {minutes:.1f} min ({describe_cpu()}, {machine()['date']})\n")
    print(table(mem, ["process", "pid", "rss_after_warmup_MiB", "rss_max_MiB", "rss_last_MiB", "growth_pct"]))
    print(f"\nstep time after warm-up: first quarter {drift['first_quarter_s']:.2f} s, last quarter "
          f"{drift['last_quarter_s']:.2f} s ({drift['drift_pct']:+.1f}%); goal: memory growth within 10%, no drift")
    worst = max((m["growth_pct"] for m in mem), default=0.0)
    print(f"largest memory growth after warm-up: {worst:.1f}% ({'met' if worst <= 10 else 'MISSED'})")
    path = save("soak", [*mem, {"process": "step_time", **drift}])
    print(f"saved {path}")
    return {"memory": mem, "drift": drift, "minutes": minutes}


if __name__ == "__main__":
    main()
