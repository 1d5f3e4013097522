"""The learner's optimizer pieces: an AdamW whose step can be skipped, and the LR schedule."""
from __future__ import annotations

import math

import torch


class SkippableAdamW(torch.optim.AdamW):
    """AdamW whose next ``step`` can be skipped outright: parameters *and* moments untouched.

    Zeroing a bad gradient is not enough (Adam's moments would still decay and move the weights);
    DeepSpeed calls this ``step`` at the accumulation boundary under every ZeRO stage."""

    skip_next = False

    def step(self, closure=None):
        if self.skip_next:
            self.skip_next = False
            return None
        return super().step(closure)


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
