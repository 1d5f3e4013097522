"""Every benchmark in one command: a markdown table per benchmark and one JSON with the machine.

    python -m bench                     # rewards, rollout, broadcast, delta sync, optimizer, attention, linear, end to end vs TRL (~50 min on 2 cores)
    python -m bench --only rewards rollout
    python -m bench --quick             # small sizes of each, to check the setup (~5 min)

Each benchmark also runs alone with its size knobs (``python -m bench.rollout --help``, ...); every
row is a ratio against a baseline measured in the same run. The orchestrator-overhead figure is the
``other_%`` column of the end-to-end table (step time that is none of generate, score, train, sync).
The learning experiment (``python -m bench.learning``), the soak run (``python -m bench.soak``) and
the loop model's calibration (``python -m bench.calibrate``) are longer and run on their own, as does
the start-up cost of a short run with and without a session (``python -m bench.session``); the
layout planner (``python -m bench.plan``) runs nothing and takes a second. Results: ``bench/results/all.json``.
"""
from __future__ import annotations

import argparse
import importlib
import json
import pathlib
import time

from bench.common import machine

BENCHES = {
    "rewards": ([], ["--cases", "60", "--boxes", "1", "4", "16"]),
    "rollout": ([], ["--sizes", "tiny", "30m", "--prompts", "4"]),
    "broadcast": ([], ["--sizes", "tiny", "30m", "50m", "--engines", "1"]),
    "e2e": ([], ["--sizes", "tiny", "30m", "--steps", "2", "--max-new-tokens", "32"]),
    "delta_sync": ([], ["--steps", "6", "--lrs", "1e-6"]),
    "optimizer": ([], ["--sizes", "tiny", "30m"]),
    "attention": ([], ["--sizes", "tiny", "--reps", "2"]),
    "linear": ([], ["--sizes", "tiny", "--reps", "2"]),
}
E2E_FULL = ["--sizes", "tiny", "30m", "400m"]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=sorted(BENCHES), default=list(BENCHES))
    ap.add_argument("--quick", action="store_true", help="small sizes only")
    args = ap.parse_args(argv)
    results = {"machine": machine(), "benchmarks": {}}
    t_all = time.perf_counter()
    for name in args.only:
        full, quick = BENCHES[name]
        argv_b = quick if args.quick else (E2E_FULL if name == "e2e" else full)
        print(f"\n# bench.{name} {' '.join(argv_b)}\n", flush=True)
        t0 = time.perf_counter()
        rows = importlib.import_module(f"bench.{name}").main(argv_b)
        results["benchmarks"][name] = {"argv": argv_b, "seconds": round(time.perf_counter() - t0, 1), "rows": rows}
    results["minutes"] = round((time.perf_counter() - t_all) / 60, 1)
    out = pathlib.Path("bench/results")
    out.mkdir(parents=True, exist_ok=True)
    (out / "all.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"\nall benchmarks: {results['minutes']} min; bench/results/all.json")
    return results


if __name__ == "__main__":
    main()
