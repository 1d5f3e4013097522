"""fp32 linear layers through oneDNN, on CPUs where it outruns torch's own fp32 matmul.

torch computes fp32 ``nn.Linear`` on CPU with its BLAS (MKL in the PyPI wheels) and bf16 with
oneDNN. On an AMD EPYC with AVX-512, oneDNN's fp32 inner product ran the learner's shapes 1.1-1.9x
faster than MKL (``python -m bench.linear`` measures it on any CPU, with the learner's update).
``install(model)`` routes every ``nn.Linear`` of a model through :class:`OneDNNLinear` in fp32 on
CPU: the forward pass and the input gradient as oneDNN inner products
(``torch.ops.mkldnn._linear_pointwise``), the weight gradient as torch's matmul (oneDNN was no
faster there: it reduces over the rows). Same values to fp32 round-off. ``learner.cpu_linear:
auto`` takes it on AMD CPUs with AVX-512, where it was measured faster, and keeps torch's elsewhere
-- a rule, not a timing at start-up: a probe then would run beside the engines' start-up and decide
at random, and every run and resumption on a machine must compute with the same kernels.

    kind, why = choose("auto")    # ("onednn", "auto: AMD CPU with AVX-512, where ...") on such a CPU
    install(model)                # number of linear layers routed
"""
from __future__ import annotations

import types

import torch

CHOICES = ("auto", "torch", "onednn")


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


def choose(value: str, dtype: str = "fp32", device: str = "cpu", zero_stage: int = 0,
           vendor: str | None = None, flags: set[str] | None = None) -> tuple[str, str]:
    """(``torch`` or ``onednn``, why) for ``learner.cpu_linear`` on this machine.

    >>> choose("auto", vendor="AuthenticAMD", flags={"avx2", "avx512f"})[0], choose("auto", vendor="GenuineIntel", flags={"avx512f"})[0]
    ('onednn', 'torch')
    """
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
    from conf.hardware import cpu_flags, cpu_vendor
    vendor = cpu_vendor() if vendor is None else vendor
    flags = cpu_flags() if flags is None else flags
    if vendor == "AuthenticAMD" and "avx512f" in flags:
        return "onednn", ("auto: AMD CPU with AVX-512, where oneDNN's fp32 inner product outran torch's BLAS "
                          "(python -m bench.linear)")
    return "torch", "auto: torch's BLAS (python -m bench.linear measures oneDNN against it on this CPU)"
