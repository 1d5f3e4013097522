"""The warm-started embedded models shipped with the project (``data/embedded/``): a first
``conf=rec`` / ``conf=ovd`` run (or one of base.yaml's ``builtin:tiny``, the model of the suite's
run-management tests) starts training at once instead of warm-starting for minutes.

    python -m tools.ship_models            # build (or take from the cache), check, and write data/embedded/
    python -m tools.ship_models --check    # re-run each shipped model's recorded check; print the table
    python -m tools.ship_models --only task/rec   # (re)build and ship one of them

Each shipped model is what ``data.tiny_model.resolve_model_path`` would build on first use (the
project's own code, same recipe, seed 0), with its ``BUILD.json`` extended by the machine it was
built on, the sha256 of its weights, and ``val_check``: the greedy answers of a float32 eager vLLM engine
on the first ``CHECK_ROWS`` rows of its task's validation split and the metrics they reach.
``tests/data/test_embedded.py`` re-runs that check, so a shipped model that stops matching its
recipe's record fails the suite. Rebuilding from scratch is this command with an empty cache
(``VLM_R1_RAY_CACHE=$(mktemp -d) python -m tools.ship_models``).
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import pathlib
import platform
import shutil
import subprocess

import conf
from data.tiny_model import SHIPPED_DIR, cache_root, resolve_model_path

REPO = pathlib.Path(__file__).resolve().parents[1]
# the embedded model of each main config (and base.yaml's default, builtin:tiny, whose check runs its
# task over base.yaml's recipe), and the config whose val split its check scores
MODELS = {"rec": "builtin:tiny-qwen3-vl-one-shape", "ovd": "builtin:tiny-qwen3-vl-one-shape-ovd",
          "task/rec": "builtin:tiny"}
CHECK_ROWS = 32
# what the check compares, with the tolerance: 2 rows' worth (a CPU with other float reductions may
# flip a near-tie token); a random init writes no parsable answer, so parse_failures alone tells them apart
CHECKS = {"rec": {"accuracy": 2 / CHECK_ROWS, "mean_iou": 2 / CHECK_ROWS, "parse_failures": 2},
          "ovd": {"AP50": 2 / CHECK_ROWS, "precision@0.5": 2 / CHECK_ROWS, "boxes_per_answer": 2 / CHECK_ROWS,
                  "parse_failures": 2}}
CHECKS["task/rec"] = CHECKS["rec"]


def sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cpu_name() -> str:
    """The CPU and the flags that decide its arithmetic (bf16 / AMX), for the build record."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = [f for f in fields.get("Flags", "").split() if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")]
    return f"{fields.get('Model name', '?').strip()}, {os.cpu_count()} cores, {' '.join(flags)}"


def val_check(model_path: str, name: str) -> dict:
    """Greedy answers of a float32 vLLM engine on the first ``CHECK_ROWS`` val rows of
    ``conf=<name>``, scored as an evaluation scores them (in a process of its own)."""
    return val_checks({name: model_path})[name]


def val_checks(models: dict[str, str]) -> dict[str, dict]:
    """``val_check`` of several models (config name -> model path) in one process, one engine after
    the other: each check's process would import vLLM again (~15 CPU-seconds)."""
    import sys
    pairs = [x for name, path in models.items() for x in (name, path)]
    proc = subprocess.run([sys.executable, "-m", "tools.ship_models", "--val-check", *pairs],
                          cwd=REPO, capture_output=True, text=True, env={**os.environ, "VLLM_LOGGING_LEVEL": "ERROR"})
    if proc.returncode:
        raise RuntimeError(f"the check of {', '.join(models.values())} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _val_check_here(model_path: str, name: str) -> dict:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from actors.rollout import RolloutEngine
    from data.prepare import load_splits
    from trainer.evaluate import score_rollouts
    # eager: the record is the model's, not the compiler's (conf=rec / ovd compile where a C++ compiler is
    # found: ~35 s of Inductor per check from an empty cache; the compiled engine is tested by the families)
    cfg = conf.resolve(conf.load([f"conf={name}", "rollout.dtype=float32", "rollout.enforce_eager=true"]), cache_root())
    _, val, _ = load_splits(cfg.data, train=False)
    engine = RolloutEngine(model_path, conf.plain(cfg.rollout), seed=0, model_cfg=conf.plain(cfg.model))
    metrics, _ = score_rollouts(engine.generate(val[:CHECK_ROWS], 1, True), cfg.data.task)
    return {"rows": CHECK_ROWS, "split": "val", "dtype": "float32", "metrics": metrics}


def ship(name: str) -> pathlib.Path:
    """Build (or take from the cache) the embedded model of ``conf=<name>``, check it, and copy it
    with its record into ``data/embedded/``."""
    model = MODELS[name]
    built = pathlib.Path(resolve_model_path(model, 0, shipped=False))
    out = SHIPPED_DIR / built.name
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(built, out)
    info = json.loads((out / "BUILD.json").read_text())
    info.update({"model": model, "built_on": cpu_name(), "built": datetime.date.today().isoformat(),
                 "command": "python -m tools.ship_models",
                 "sha256": {p.name: sha256(p) for p in sorted(out.glob("*.safetensors"))},
                 "val_check": val_check(str(out), name)})
    (out / "BUILD.json").write_text(json.dumps(info, indent=1) + "\n")
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only re-run the recorded checks of the shipped models")
    ap.add_argument("--only", choices=sorted(MODELS), help="only this config's model")
    ap.add_argument("--val-check", nargs="+", metavar="CONF MODEL", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.val_check:  # (CONF MODEL pairs, checked here and printed as JSON: val_checks runs this process)
        pairs = args.val_check
        if len(pairs) % 2:
            ap.error("--val-check takes CONF MODEL pairs")
        print(json.dumps({name: _val_check_here(path, name) for name, path in zip(pairs[::2], pairs[1::2])}))
        return
    names = [n for n in MODELS if not args.only or n == args.only]
    if args.check:  # the shipped ones, checked in one process (one vLLM import for all)
        paths = {n: pathlib.Path(resolve_model_path(MODELS[n], 0)) for n in names}
        now = {n: r["metrics"] for n, r in val_checks({n: str(p) for n, p in paths.items()}).items()}
    else:
        paths = {n: ship(n) for n in names}
    rows = []
    for name, path in paths.items():
        info = json.loads((path / "BUILD.json").read_text())
        recorded = info["val_check"]["metrics"]
        for k in CHECKS[name]:
            rows.append(f"| conf={name} | {path.name} | {k} | {recorded[k]:.4f} | {(now[name] if args.check else recorded)[k]:.4f} |")
    print("| config | shipped model | metric | recorded | now |\n|---|---|---|---|---|\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
