"""Delta weight sync against dense, over real GRPO runs: bytes on the wire and seconds per update.

    python -m bench.delta_sync [--steps 20] [--lrs 1e-6 1e-4] [--model builtin:tiny]

For each learning rate, runs ``orchestrator.py conf=rec`` for ``--steps`` steps twice, with
``rollout.sync_delta`` off (the baseline, same run) and on (a full update every
``rollout.sync_full_every``=10), everything else equal, and reads ``sync/bytes`` and
``time/sync_s`` of every step from ``metrics.jsonl``. The engines run bf16 (``rollout.dtype``):
at VLM-R1's learning rate (1e-6) an Adam step moves few weights by a whole bf16 unit, so most
elements stay bit-identical between updates. Writes bench/results/delta_sync.json.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

from bench.common import machine, save, table

REPO = pathlib.Path(__file__).resolve().parents[1]


def run(model: str, lr: float, delta: bool, steps: int, tmp: pathlib.Path) -> list[dict]:
    out = tmp / f"lr{lr:g}_{'delta' if delta else 'dense'}"
    cmd = [sys.executable, str(REPO / "orchestrator.py"), "conf=task/rec", f"model.path={model}", f"learner.lr={lr}",
           "learner.beta=0", "rollout.dtype=bfloat16", f"rollout.sync_delta={str(delta).lower()}",
           f"trainer.max_steps={steps}", "trainer.eval_steps=0", "trainer.report=false", "wandb.mode=disabled",
           "cluster.include_dashboard=false", f"trainer.output_dir={out}"]
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return [r for r in map(json.loads, open(out / "metrics.jsonl")) if "sync/bytes" in r]


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--lrs", nargs="+", type=float, default=[1e-6, 1e-4])
    ap.add_argument("--model", default="builtin:tiny")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from conf.hardware import describe_cpu
    rows = []
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        for lr in args.lrs:
            dense = run(args.model, lr, False, args.steps, pathlib.Path(tmp))
            delta = run(args.model, lr, True, args.steps, pathlib.Path(tmp))
            full = dense[0]["sync/bytes"]
            for name, rs in (("dense", dense), ("delta", delta)):
                b = [r["sync/bytes"] for r in rs]
                s = [r["time/sync_s"] for r in rs]
                rows.append({"lr": lr, "sync": name, "steps": len(rs), "MB_per_update": sum(b) / len(b) / 1e6,
                             "bytes_vs_dense": sum(b) / (full * len(b)),
                             "sparse_updates": sum(0 < x < full for x in b),
                             "min_bytes_vs_dense": min(b) / full, "s_per_update": sum(s) / len(s)})
            base = rows[-2]["s_per_update"]
            for r in rows[-2:]:
                r["s_vs_dense"] = r["s_per_update"] / base
    print(f"## Delta weight sync ({describe_cpu()}; {machine()['date']}; {args.model}, conf=rec, bf16 engines)\n")
    print(table(rows, ["lr", "sync", "steps", "MB_per_update", "bytes_vs_dense", "min_bytes_vs_dense",
                       "sparse_updates", "s_per_update", "s_vs_dense"]))
    print("\nbytes_vs_dense: mean bytes an update put on the wire over a dense update of the same model (the full "
          "updates, every 10th and the first, included); min: the smallest update")
    print(f"\nsaved {save('delta_sync', rows)}")
    return rows


if __name__ == "__main__":
    main()
