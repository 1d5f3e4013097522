"""An experiment's stages: each one ``orchestrator.py`` command run into its own folder, skipped when
its results exist (so an interrupted experiment continues), and the readers of what a run wrote.
Shared by ``bench.learning``, ``bench.testbed``, ``bench.hack_trigger`` and ``bench.dynamic_sampling``."""
from __future__ import annotations

import json
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


def eval_records(path: pathlib.Path) -> list[dict]:
    return json.loads(path.read_text())["records"]


def rows_of(run_dir: pathlib.Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


def checkpoint_hf(run_dir: pathlib.Path, step: int) -> pathlib.Path:
    return run_dir / "checkpoints" / f"step_{step:06d}" / "hf"
