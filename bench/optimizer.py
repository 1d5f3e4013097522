"""The learner's optimizer step: ``learner.optim.SkippableAdamW`` fused against its code before.

    python -m bench.optimizer [--sizes 30m 400m] [--steps 5] [--threads 2]

Both take AdamW steps over every parameter of the random Qwen2.5-VL of each size (the models
``bench.e2e`` trains) in fp32, with random gradients, and refuse a step whose gradients are not all
finite. ``before`` is the learner's code before this change: an ``isfinite`` pass per gradient, then
torch's ``foreach`` AdamW (``learner.adam_impl=foreach``); ``fused`` is the default now: the total
gradient norm as the finiteness check, then torch's fused AdamW (one kernel per parameter).
Reports the best step time of each, the ratio, and the largest difference between the weights the
two produce after ``--steps`` steps from the same start (fp32 round-off). Writes
bench/results/optimizer.json.
"""
from __future__ import annotations

import argparse
import pathlib
import tempfile
import time

from bench.common import machine, save, table


def _before_step(opt, params) -> None:
    """The finiteness check and step the learner had before ``adam_impl=fused`` (the baseline)."""
    import torch
    grads = [p.grad for p in params if p.grad is not None]
    if bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
        torch.optim.AdamW.step(opt)


def _measure(shapes: list, impl: str, steps: int) -> tuple[float, list]:
    """(best seconds per step, the weights after ``steps`` steps) for ``before`` or ``fused``."""
    import torch
    from learner.optim import SkippableAdamW, adamw_kernel
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=g) * 0.02) for s in shapes]
    fused = impl == "fused"
    opt = SkippableAdamW(params, lr=1e-5, betas=(0.9, 0.999), weight_decay=0.0,
                         **adamw_kernel("fused" if fused else "foreach"))
    best = float("inf")
    for k in range(steps + 1):  # the first creates the moments and is not timed
        gg = torch.Generator().manual_seed(100 + k)
        for p in params:
            p.grad = torch.randn(p.shape, generator=gg) * 1e-3
        t0 = time.perf_counter()
        opt.step() if fused else _before_step(opt, params)
        if k:
            best = min(best, time.perf_counter() - t0)
    return best, [p.detach() for p in params]


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["30m", "400m"])
    ap.add_argument("--steps", type=int, default=5, help="timed steps (best of them is reported)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    a = ap.parse_args(argv)
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText
    from data.tiny_model import build
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = []
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="bench-opt") as tmp:
        for size in a.sizes:
            cfg = AutoConfig.from_pretrained(build(pathlib.Path(tmp) / size, seed=0, size=size))
            with torch.device("meta"):  # the shapes only
                shapes = [tuple(p.shape) for p in AutoModelForImageTextToText.from_config(cfg).parameters()]
            n = sum(torch.Size(s).numel() for s in shapes)
            res = {impl: _measure(shapes, impl, a.steps) for impl in ("before", "fused")}
            diff = max(float((x - y).abs().max()) for x, y in zip(res["before"][1], res["fused"][1]))
            for impl, (sec, _) in res.items():
                rows.append({"size": size, "params_M": n / 1e6, "variant": impl, "step_ms": 1000 * sec,
                             "x_speed": res["before"][0] / sec, "GB_per_s": 16 * n / sec / 1e9,
                             "max_weight_diff": diff if impl == "fused" else 0.0})
            del res
    from conf.hardware import describe_cpu
    print(f"\n## AdamW step with the finiteness check ({describe_cpu()}, {machine()['date']}, "
          f"{torch.get_num_threads()} threads): fp32, best of {a.steps}\n")
    print(table(rows, ["size", "params_M", "variant", "step_ms", "x_speed", "GB_per_s", "max_weight_diff"]))
    print("\nbefore: isfinite per gradient + foreach AdamW; fused: total-norm check + fused AdamW (the default). "
          "GB_per_s: the 16 bytes per parameter Adam reads and writes at least (weight, gradient, two moments) "
          "over the step time; max_weight_diff: largest difference of the weights after the steps.")
    print(f"\nsaved {save('optimizer', rows)}")
    return rows


if __name__ == "__main__":
    main()
