"""fp32 linear layers through oneDNN on CPUs where it outruns torch's own fp32 matmul.

torch computes fp32 ``nn.Linear`` on CPU with its BLAS (MKL in the PyPI wheels) and bf16 with
oneDNN. On an AMD EPYC with AVX-512 the two differ by 1.2-1.9x in fp32 at the learner's shapes
(MKL 131-160 GFLOP/s, oneDNN 180-200 at 600 rows; ``python -m bench.linear``). ``install(model)``
routes every ``nn.Linear`` of a float32 model through :class:`OneDNNLinear`: the forward pass and
the input gradient as oneDNN inner products (``torch.ops.mkldnn._linear_pointwise``), the weight
gradient as torch's matmul (oneDNN is no faster there: it reduces over the rows). Same values to
fp32 round-off; ``learner.cpu_linear: auto`` takes it only where a probe measures it at least
1.1x faster on this CPU (:func:`probe`, once per machine, thread count and model shape: the result
is cached, so that every run and resumption there computes with the same kernels).

    kind, why = choose("auto", hidden=512, intermediate=1536)   # ("onednn", "auto: oneDNN 1.6x ...")
    install(model)                                               # number of linear layers routed
"""
from __future__ import annotations

import json
import os
import pathlib
import time
import types

import torch

CHOICES = ("auto", "torch", "onednn")
MIN_GAIN = 1.1  # auto takes oneDNN only when the probe measures it at least this much faster


def available() -> bool:
    """Whether this torch has oneDNN's fp32 inner product (x86 and aarch64 wheels do)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _onednn(x2d: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x2d @ weight.T + bias`` as one oneDNN inner product (``weight`` may be a transposed view)."""
    return torch.ops.mkldnn._linear_pointwise(x2d, weight, bias, "none", [], "")


class OneDNNLinear(torch.autograd.Function):
    """``F.linear(x, weight, bias)`` with oneDNN computing the output and the input gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        x2d = x.reshape(-1, x.shape[-1])
        if not x2d.is_contiguous():
            x2d = x2d.contiguous()
        ctx.save_for_backward(x2d, weight)
        ctx.has_bias = bias is not None
        return _onednn(x2d, weight, bias).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x2d, weight = ctx.saved_tensors
        g2d = grad.reshape(-1, grad.shape[-1])
        if not g2d.is_contiguous():
            g2d = g2d.contiguous()
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:  # dL/dx = g @ W: an inner product with W's transpose (a view)
            gx = _onednn(g2d, weight.t(), None).view(*grad.shape[:-1], weight.shape[1])
        if ctx.needs_input_grad[1]:
            gw = g2d.t() @ x2d
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g2d.sum(0)
        return gx, gw, gb


def _forward(self, x: torch.Tensor) -> torch.Tensor:
    if x.dtype != torch.float32 or self.weight.dtype != torch.float32 or x.device.type != "cpu":
        return torch.nn.functional.linear(x, self.weight, self.bias)
    return OneDNNLinear.apply(x, self.weight, self.bias)


def install(model: torch.nn.Module) -> int:
    """Route every ``nn.Linear`` of ``model`` (LoRA's base layers included) through oneDNN in fp32 on
    CPU (other dtypes and devices keep ``F.linear``); returns how many layers it routed."""
    n = 0
    for m in model.modules():
        if type(m) is torch.nn.Linear:  # (not subclasses: quantized or LoRA layers keep their forward)
            m.forward = types.MethodType(_forward, m)
            n += 1
    return n


def probe(hidden: int, intermediate: int, rows: int = 512, reps: int = 3) -> float:
    """How many times faster oneDNN runs this model's MLP shapes in fp32 than ``F.linear`` (forward
    and input gradient, best of ``reps``; tens of milliseconds)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, hidden, generator=g)
    w = torch.randn(intermediate, hidden, generator=g) * 0.02
    gy = torch.randn(rows, intermediate, generator=g)

    def best(f) -> float:
        f()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
        return min(times)

    plain = best(lambda: (torch.nn.functional.linear(x, w), gy @ w))
    ours = best(lambda: (_onednn(x, w, None), _onednn(gy, w.t(), None)))
    return plain / ours


def measured_gain(hidden: int, intermediate: int, path: pathlib.Path | None = None) -> float:
    """:func:`probe`'s result for this CPU, torch, thread count and shapes, measured once and kept in
    ``<cache>/cpu_linear.json``: every later learner on the machine makes the same choice, so runs
    and their resumptions compute with the same kernels."""
    from conf.hardware import describe_cpu
    from data.tiny_model import cache_root
    path = path or cache_root() / "cpu_linear.json"
    key = f"{describe_cpu()} | torch {torch.__version__} | {torch.get_num_threads()} threads | {hidden}x{intermediate}"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = round(probe(hidden, intermediate), 3)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(known, indent=1))
            os.replace(tmp, path)
        except OSError:  # a read-only cache: measure again next time
            pass
    return float(known[key])


def choose(value: str, hidden: int, intermediate: int, dtype: str = "fp32", device: str = "cpu",
           zero_stage: int = 0) -> tuple[str, str]:
    """(``torch`` or ``onednn``, why) for ``learner.cpu_linear``; ``auto`` probes this CPU."""
    if value not in CHOICES:
        raise ValueError(f"learner.cpu_linear={value!r}: use one of {CHOICES}")
    if device != "cpu" or dtype != "fp32":
        return "torch", f"{dtype} on {device}: torch's own kernels"
    if zero_stage == 3:  # (ZeRO-3 gathers and frees each weight around the layers that use it)
        return "torch", "ZeRO-3: torch's own linear, whose weights ZeRO-3 gathers"
    if value == "onednn" and not available():
        raise ValueError("learner.cpu_linear=onednn: this torch build has no oneDNN inner product; use torch or auto")
    if value != "auto":
        return value, "configured"
    if not available():
        return "torch", "auto: this torch build has no oneDNN inner product"
    gain = measured_gain(hidden, intermediate)
    if gain >= MIN_GAIN:
        return "onednn", f"auto: oneDNN {gain:.2f}x torch's fp32 linear on this CPU"
    return "torch", f"auto: oneDNN {gain:.2f}x torch's fp32 linear on this CPU (under {MIN_GAIN}x)"
