"""Weight broadcast: learner rank 0 -> running vLLM engines, against the machine's memory copy.

    python -m bench.broadcast [--sizes 30m 50m 250m] [--engines 1 2] [--pack-mb 64 0] [--transfers vllm extension]

Builds random Qwen2.5-VL models of ~100 MB and ~500 MB of bf16 weights, starts the real roles
(DeepSpeed learner, vLLM engines, gloo weight group) on a local Ray, and times the full update
the orchestrator does every step (gather, broadcast, in-place reload, cache reset) to 1 and 2
engines, best of 3, with tensors packed (``rollout.sync_pack_mb``) and one broadcast per tensor
(0, the way before packing), through vLLM's weight-transfer API (``rollout.weight_transfer: vllm``)
and, with ``--transfers vllm extension``, through the worker extension too. The baselines are a
memory copy of the same bytes in one process (the physical limit of moving them here) and the
per-tensor sync of the same run. Writes bench/results/broadcast.json.
"""
from __future__ import annotations

import argparse
import pathlib
import tempfile
import time

from bench.common import machine, save, table
from conf.hardware import describe_cpu


def memcpy_gbps(nbytes: int, repeats: int = 5) -> float:
    import torch
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16).fill_(1.0)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return nbytes / best / 1e9


def measure(model_dir: str, engines: int, tmp: str, pack_mb: float, transfer: str = "vllm") -> tuple[int, float, dict]:
    import ray

    import conf
    from trainer.roles import launch
    cfg = conf.resolve(conf.load([f"model.path={model_dir}", f"rollout.num_engines={engines}", "learner.beta=0",
                                  "reward.num_workers=1", f"trainer.prompts_per_step={max(engines, 1)}", f"rollout.sync_pack_mb={pack_mb}",
                                  f"rollout.weight_transfer={transfer}",
                                  "cluster.include_dashboard=false", f"trainer.output_dir={tmp}/out"]),
                       pathlib.Path(tmp))
    try:
        cfg, pool, learners, _ = launch(cfg, model_dir, pathlib.Path(tmp) / "out")
        eng = pool.engines
        meta = pool.meta  # in the engines' dtype, as every training step sends them
        best, sent, phases = float("inf"), 0, {}
        for _ in range(3):
            t0 = time.perf_counter()
            out = ray.get(learners.call("broadcast_weights") + eng.call("receive_weights", meta))
            took = time.perf_counter() - t0
            if took < best:
                best, sent = took, out[0]
                phases = ray.get(eng.actors[0].last_sync_timing.remote())  # engine 0's side of it
        return sent, best, phases
    finally:
        ray.shutdown()


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["30m", "50m", "250m"])
    ap.add_argument("--engines", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--pack-mb", nargs="+", type=float, default=[64, 0], help="rollout.sync_pack_mb values (0: per tensor)")
    ap.add_argument("--transfers", nargs="+", default=["vllm"], choices=["vllm", "extension"],
                    help="rollout.weight_transfer entry points (the first is the baseline of vs_first_transfer)")
    args = ap.parse_args(argv)
    from data.tiny_model import build
    rows = []
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        for size in args.sizes:
            model_dir = str(build(pathlib.Path(tmp) / size, seed=0, size=size))
            for n, pack, tr in [(n, p, t) for n in args.engines for p in args.pack_mb for t in args.transfers]:
                sent, secs, ph = measure(model_dir, n, tmp, pack, tr)
                copy = memcpy_gbps(sent)
                gbps = sent / secs / 1e9
                rows.append({"size": size, "MB": sent / 1e6, "engines": n, "pack_mb": pack, "transfer": tr,
                             "seconds": secs,
                             "GB_per_s": gbps, "memcpy_GB_per_s (baseline)": copy, "frac_of_memcpy": gbps / copy,
                             "transfer_s": ph.get("receive_s"), "reload_s": ph.get("reload_s"),
                             "transfer_GB_per_s": sent / ph["receive_s"] / 1e9 if ph.get("receive_s") else None,
                             "other_s": secs - ph.get("receive_s", 0) - ph.get("reload_s", 0)})
        for r in rows:  # against the per-tensor sync of the same size and engines, same run
            key = (r["size"], r["engines"])
            base = [b for b in rows if (b["size"], b["engines"], b["pack_mb"], b["transfer"]) == (*key, 0, r["transfer"])]
            r["speedup_vs_per_tensor"] = base[0]["seconds"] / r["seconds"] if base else None
            first = [b for b in rows if (b["size"], b["engines"], b["pack_mb"], b["transfer"])
                     == (*key, r["pack_mb"], args.transfers[0])]
            r["vs_first_transfer"] = r["seconds"] / first[0]["seconds"]
    print(f"## Weight broadcast ({describe_cpu()}, {machine()['date']})\n")
    print(table(rows, ["size", "MB", "engines", "pack_mb", "transfer", "seconds", "vs_first_transfer",
                       "speedup_vs_per_tensor", "GB_per_s",
                       "memcpy_GB_per_s (baseline)", "frac_of_memcpy", "transfer_s", "transfer_GB_per_s", "reload_s",
                       "other_s"]))
    print("\ntransfer: time engine 0 waits on the wire (packed: overlapped with the reload of the previous pack); "
          "reload: the rest of the update on engine 0 (vLLM re-running its weight processing); other: Ray calls")
    print(f"\nsaved {save('broadcast', rows)}")
    return rows


if __name__ == "__main__":
    main()
