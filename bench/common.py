"""Shared helpers of the benchmarks: machine description, timing, table printing, JSON output."""
from __future__ import annotations

import json
import os
import pathlib
import platform
import subprocess
import sys
import time


def machine() -> dict:
    """What the numbers were measured on, the CPU flags that decide bf16 speed included."""
    from conf.hardware import capped, cpu_info, speed_flags
    info = cpu_info()
    flags, cap = capped(set(info.get("flags", "").split()))
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": info.get("model name", "unknown"), "flags": " ".join(speed_flags(flags)), "isa_cap": cap,
            "cores": os.cpu_count(), "mem_gib": round(mem_gb, 1), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def best_of(fn, repeats: int = 3) -> float:
    """Fastest wall time of ``repeats`` calls (the least disturbed by other load)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def table(rows: list[dict], columns: list[str]) -> str:
    """A markdown table of ``rows`` restricted to ``columns``."""
    def fmt(v):
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def save(name: str, rows: list[dict], out_dir: str | os.PathLike = "bench/results") -> pathlib.Path:
    """Write ``{machine, rows}`` as JSON under ``out_dir`` and return the path."""
    path = pathlib.Path(out_dir)
    path.mkdir(parents=True, exist_ok=True)
    out = path / f"{name}.json"
    out.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    return out


def timed_run(model: str, syn: pathlib.Path, out: pathlib.Path, steps: int, prompts: int, G: int, new_tokens: int,
              overrides: list[str]) -> list[dict]:
    """Run ``orchestrator.py conf=task/rec`` for ``steps + 2`` steps on ``model`` and the synthetic data
    in ``syn`` (no evaluation, checkpoints, report or wandb; data in file order) and return the metrics
    of steps 2 .. N-1: the first is warm-up, and the last has no next batch to generate beside it
    (asynchronous), so each returned step of either loop generates one batch and trains one."""
    repo = pathlib.Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "orchestrator.py", "conf=task/rec", f"model.path={model}", f"data.synthetic.dir={syn}",
           f"trainer.output_dir={out}", f"trainer.max_steps={steps + 2}", f"trainer.prompts_per_step={prompts}",
           f"rollout.num_generations={G}", f"rollout.max_new_tokens={new_tokens}", f"learner.micro_batch_size={G}",
           "trainer.eval_steps=0", "trainer.save_steps=0", "trainer.report=false", "wandb.mode=disabled",
           "cluster.include_dashboard=false", "data.shuffle=false", *overrides]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"this project's run failed ({' '.join(overrides)}):\n{proc.stderr[-3000:]}")
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"time/step_s"' in x][1:-1]
