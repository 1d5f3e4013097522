"""The learner's optimizer pieces: an AdamW whose step can be skipped, and the LR schedule."""
from __future__ import annotations

import math

import torch


class SkippableAdamW(torch.optim.AdamW):
    """AdamW that never applies a non-finite update: when ``skip_next`` is set (a non-finite loss)
    or any gradient it holds is not finite, ``step`` leaves parameters *and* moments untouched.

    Zeroing a bad gradient is not enough (Adam's moments would still decay and move the weights).
    DeepSpeed calls this ``step`` at the accumulation boundary on every rank under every ZeRO stage,
    with the rank's (partitioned, clipped) fp32 gradients, so the check sees exactly what would be
    applied; the decision is all-reduced so that every rank skips the same steps.

    >>> w = torch.nn.Parameter(torch.ones(2)); opt = SkippableAdamW([w], lr=0.1)
    >>> w.grad = torch.tensor([1.0, float("nan")]); opt.step(); (w.tolist(), opt.last_skipped, opt.state[w])
    ([1.0, 1.0], True, {})
    """

    skip_next = False
    last_skipped = False

    def step(self, closure=None):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        # the gradients' total norm is finite exactly when every element is (or a norm overflows the
        # dtype, 1.8e19 in fp32: an update that size is no better); one host sync per step, and
        # 4-5x faster on CPU than an isfinite pass per tensor
        finite = bool(torch.isfinite(torch.nn.utils.get_total_norm(grads))) if grads else True
        bad = self.skip_next or not finite
        self.skip_next, self.last_skipped = False, _any_rank(bad)
        if self.last_skipped:
            return None
        return super().step(closure)


def adamw_kernel(impl: str) -> dict:
    """AdamW's kernel for ``learner.adam_impl``: ``fused`` (one kernel per parameter, CPU and GPU,
    torch >= 2.4) or ``foreach``.

    >>> adamw_kernel("fused"), adamw_kernel("foreach")
    ({'fused': True, 'foreach': None}, {'fused': False, 'foreach': True})
    """
    fused = impl == "fused"
    return {"fused": fused, "foreach": None if fused else True}


def _any_rank(flag: bool) -> bool:
    """``flag`` or-ed over the ranks of the default process group (just ``flag`` without one)."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t)
    return bool(t.item() > 0)


def lr_lambda(warmup: int, schedule: str, total: int):
    """Multiplier of the base LR at optimizer step ``n``: linear warmup over ``warmup`` steps, then
    constant, linear or cosine decay to 0 at ``total``.

    >>> f = lr_lambda(2, "linear", 10)
    >>> [round(f(n), 3) for n in (0, 1, 2, 6, 10)]
    [0.5, 1.0, 1.0, 0.5, 0.0]
    """
    total = max(1, total)

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        frac = min(1.0, (step - warmup) / max(1, total - warmup))
        return {"constant": 1.0, "linear": 1.0 - frac, "cosine": 0.5 * (1 + math.cos(math.pi * frac))}[schedule]
    return f
