"""The learner's fp32 update with its linear layers in oneDNN (``learner.cpu_linear``) against torch's
own fp32 linear (its BLAS: MKL in the PyPI wheels).

    python -m bench.linear [--sizes 30m 400m] [--reps 4]

One DeepSpeed learner in fp32 (ZeRO-0, one rank, as ``bench.e2e`` runs it) on the random
Qwen2.5-VL of each size, ``bench.attention``'s step (B=2 REC prompts x G=8 completions of 64
tokens, beta 0.04: the reference pass included). Each round times one ``train_step`` with each
kernel on the same items, in turn, so that the machine's drift reaches both alike; reports the
best and the median round, the largest difference of the completions' log-probs (before any
update), and ``probe_x``: oneDNN against torch on the model's MLP shape alone (forward and input
gradient at 512 rows, best of 5). ``learner.cpu_linear: auto`` takes oneDNN on AMD CPUs with
AVX-512, where this measured it faster; on another CPU, this says whether ``onednn`` pays there.
Writes bench/results/linear.json.
"""
from __future__ import annotations

import argparse
import statistics
import time

from bench.attention import logp_diff, report, rounds, step_args, steps

KINDS = ("torch", "onednn")


def mlp_shape(model) -> tuple[int, int]:
    """``(hidden, intermediate)`` of the language model's MLP, from its config; for a config without
    them, the most common ``nn.Linear`` shape (ties: the largest)."""
    import collections

    import torch
    text = getattr(model.config, "text_config", model.config)
    if getattr(text, "hidden_size", None) and getattr(text, "intermediate_size", None):
        return int(text.hidden_size), int(text.intermediate_size)
    shapes = collections.Counter((m.in_features, m.out_features) for m in model.modules()
                                 if isinstance(m, torch.nn.Linear))
    return max(shapes, key=lambda s: (shapes[s], s[0] * s[1]))


def probe(hidden: int, intermediate: int, rows: int = 512, reps: int = 5) -> float:
    """How many times faster oneDNN runs an MLP shape in fp32 than ``F.linear``: the forward pass and
    the input gradient, the two interleaved, best of ``reps`` each."""
    import torch

    from learner.linear import _onednn
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, hidden, generator=g)
    w = torch.randn(intermediate, hidden, generator=g) * 0.02
    gy = torch.randn(rows, intermediate, generator=g)
    fns = {"torch": lambda: (torch.nn.functional.linear(x, w), gy @ w),
           "onednn": lambda: (_onednn(x, w, None), _onednn(gy, w.t(), None))}
    best = {k: float("inf") for k in fns}
    for f in fns.values():
        f()  # (oneDNN builds its primitive at the first call of a shape)
    for _ in range(reps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best["torch"] / best["onednn"]


def _route(lr, kind: str) -> None:
    """Point the policy's and the reference's linear layers at ``kind``."""
    from learner import linear
    for model in (lr.engine.module, lr.ref):
        if kind == "onednn":
            linear.install(model)
        else:
            for m in model.modules():
                m.__dict__.pop("forward", None)  # back to nn.Linear.forward


def measure(model_dir: str, items, reps: int) -> dict:
    lr, logp, times = rounds(model_dir, items, ["learner.dtype=fp32", "learner.cpu_linear=torch"], KINDS, _route, reps)
    diff = logp_diff(logp["onednn"], logp["torch"])
    return {"probe": probe(*mlp_shape(lr.engine.module)), "logp_diff": diff,
            **{k: {"best": min(times[k]), "median": statistics.median(times[k])} for k in KINDS}}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["30m", "400m"])
    ap.add_argument("--reps", type=int, default=4, help="timed rounds (each times both kernels once)")
    step_args(ap)
    a = ap.parse_args(argv)
    rows = []
    for size, model_dir, items in steps(a, "linear"):
        print(f"[{size}] ...", flush=True)
        got = measure(model_dir, items, a.reps)
        for k in KINDS:
            rows.append({"size": size, "linear": k + (" (baseline)" if k == "torch" else ""),
                         "best_s": got[k]["best"], "median_s": got[k]["median"],
                         "x_torch": got["torch"]["median"] / got[k]["median"],
                         "probe_x": got["probe"] if k == "onednn" else None,
                         "logp_diff": got["logp_diff"] if k == "onednn" else None})
    report("linear", "Learner update in fp32, linear layers", a, rows,
           ["size", "linear", "best_s", "median_s", "x_torch", "probe_x", "logp_diff"],
           "x_torch: torch's median over this kernel's (same run, same items); probe_x: oneDNN against torch "
           "on the model's MLP shape alone; logp_diff: the largest difference of the completions' log-probs from torch's")
    return rows


if __name__ == "__main__":
    main()
