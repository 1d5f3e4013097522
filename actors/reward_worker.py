"""Reward workers: CPU-only Ray actors that score completions with ``rewards.REGISTRY``.

A worker owns nothing but its configuration. ``score`` takes a chunk of completions (text,
solution, per-row accuracy method, image sizes) and returns, per completion, the weighted total,
each reward's value and any parse failures, plus per-reward failure counts for the chunk.
"""
from __future__ import annotations

import collections
import os
from dataclasses import dataclass

from rewards import score as score_one


@dataclass
class ScoreTask:
    """What a worker needs of one completion (no token ids, no pixels)."""
    key: tuple[str, int]
    completion: str
    solution: str
    accu_method: str | None
    image_size: tuple[int, int] | None
    input_size: tuple[int, int] | None


class RewardWorker:
    def __init__(self, funcs: dict[str, float], box_convention: str = "vlm_r1"):
        self.funcs = dict(funcs)
        self.box_convention = box_convention

    def score(self, tasks: list[ScoreTask]) -> dict:
        """``{"keys", "totals", "values", "failures"}`` for the chunk, in input order; ``failures``
        counts parse failures as ``{"reward/reason": n}``."""
        totals, values, failures = [], [], collections.Counter()
        for t in tasks:
            s = score_one(t.completion, t.solution, self.funcs, t.accu_method, image_size=t.image_size,
                          input_size=t.input_size, box_convention=self.box_convention)
            totals.append(s.total)
            values.append(s.values)
            failures.update(f"{name}/{reason}" for name, reason in s.failures.items())
        return {"keys": [t.key for t in tasks], "totals": totals, "values": values, "failures": dict(failures)}

    def pid(self) -> int:
        return os.getpid()


def tasks_from_rollouts(rollouts) -> list[ScoreTask]:
    """Score tasks for rollouts (first image's sizes drive box rescaling, as in VLM-R1)."""
    out = []
    for r in rollouts:
        p = r.prompt
        out.append(ScoreTask(r.key, r.completion_text, p.solution, p.accu_method,
                             p.image_sizes[0] if p.image_sizes else None, r.input_sizes[0] if r.input_sizes else None))
    return out
