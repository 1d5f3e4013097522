"""What starting a private Ray costs in CPU, with and without Ray's prestarted idle workers.

    python -m bench.ray_start                  # 3 actors (an engine, a learner, a reward worker), 3 rounds
    python -m bench.ray_start --actors 5 --rounds 5

Each variant runs in a fresh process: ``ray.init`` as ``trainer/cluster.py`` calls it (no dashboard),
then ``--actors`` actors that each carry a ``runtime_env`` (as every role of a run does: its thread
settings), one call each, then ``ray.shutdown``. CPU is the whole machine's (``/proc/stat``), so Ray's
own daemons and workers count. Rounds alternate the variants; the table shows the median and the
ratio against Ray's default measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from bench.common import machine, save, table

CHILD = r'''
import json, os, sys, time
def cpu():
    v = open("/proc/stat").readline().split()[1:]
    return (int(v[0]) + int(v[1]) + int(v[2])) / os.sysconf("SC_CLK_TCK")
c0, w0 = cpu(), time.time()
import ray
ray.init(num_cpus=max(os.cpu_count(), int(sys.argv[1])), include_dashboard=False, _temp_dir=sys.argv[2],
         runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}, logging_level="WARNING")
class Role:
    def ping(self):
        return os.getpid()
RemoteRole = ray.remote(num_cpus=1)(Role)
roles = [RemoteRole.options(runtime_env={"env_vars": {"OMP_NUM_THREADS": str(i + 1)}}).remote()
         for i in range(int(sys.argv[1]))]
ray.get([r.ping.remote() for r in roles])
c1, w1 = cpu(), time.time()
ray.shutdown()
print(json.dumps({"cpu_s": c1 - c0, "wall_s": w1 - w0}))
'''

VARIANTS = {"Ray's default (prestart)": "1", "prestart off (trainer/cluster.py)": "0"}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--actors", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    got: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        for name, flag in VARIANTS.items():
            with tempfile.TemporaryDirectory(prefix="rs-", dir="/tmp") as tmp:
                env = {**os.environ, "RAY_prestart_worker_first_driver": flag}
                out = subprocess.run([sys.executable, "-c", CHILD, str(args.actors), tmp], env=env,
                                     capture_output=True, text=True, check=True, timeout=600)
            got[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1}/{args.rounds} {name}: {got[name][-1]['cpu_s']:.1f} CPU-s", flush=True)
    base = statistics.median(x["cpu_s"] for x in got[next(iter(VARIANTS))])
    rows = [{"variant": name, "actors": args.actors, "cpu_s": statistics.median(x["cpu_s"] for x in runs),
             "wall_s": statistics.median(x["wall_s"] for x in runs)} for name, runs in got.items()]
    for row in rows:
        row["cpu_vs_default"] = row["cpu_s"] / base
    m = machine()
    print(f"\nRay start-up + {args.actors} actors, whole-machine CPU ({m['cpu']}, {m['cores']} cores, {m['date']})")
    print(table(rows, ["variant", "actors", "cpu_s", "wall_s", "cpu_vs_default"]))
    save("ray_start", rows)
    return rows


if __name__ == "__main__":
    main()
