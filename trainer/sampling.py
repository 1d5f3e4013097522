"""Dynamic sampling (DAPO): train only on groups whose raw task metric has spread.

A group whose G samples all score the same has zero advantage everywhere: it costs a generation
and a learner pass and moves nothing. With ``rollout.dynamic_sampling.enabled`` each step keeps
the groups whose *raw task metric* (the accuracy rewards' values -- ``rec_iou``, ``ovd_map``...,
or the reward named in ``metric``; never the shaped total, whose format or length terms can give a
group spread its task metric does not have) has a population standard deviation above ``min_std``
(not the group mean: under a continuous reward such as IoU, identical boxes give zero spread at
any mean). Missing groups are refilled with fresh prompts from the data order, exactly as many as
are missing, in up to ``max_rounds`` rounds; a prompt is kept with probability q = 1 - p^G -
(1-p)^G, so a kept group costs 1/q prompts' generation on average.

    ds = DynamicSampler(prompts_per_step=4, min_std=0.01, max_rounds=3, metric=None)
    batch = ds.fill(first_batch, more=lambda n: generate(next n prompts) or None)

Refills request exactly the missing count, so no surplus group ever exists: none is discarded and
none is carried into a later step, where it would be one update staler than ``trainer.max_staleness``
allows (a refill runs inside the same generation call, with the same weights). When the rounds are
used up (or the data is), the step is completed with the dropped groups, which add no policy
gradient, so every step keeps its shape; that is counted, never a crash.
"""
from __future__ import annotations

import math
from typing import Callable

from trainer.pipeline import Batch


def task_metric(values: dict, metric: str | None, weights: dict | None = None) -> float:
    """A completion's raw task metric: ``values[metric]``, or (``metric`` None) the sum of its
    accuracy rewards' values (one per row: ``rec_iou``, ``ovd_map``, a row's own accuracy method...)
    that the step trains on: an accuracy reward given weight 0 in ``weights`` (the step's
    ``reward.funcs``, schedules applied) is only watched, and its spread carries no gradient. If
    every accuracy reward has weight 0, all of them count.

    >>> task_metric({"rec_format": 1.0, "rec_iou": 0.25}, None), task_metric({"rec_format": 1.0}, "rec_format")
    (0.25, 1.0)
    >>> task_metric({"rec_iou": 0.25, "rec_acc": 0.0}, None, {"rec_iou": 0.0, "rec_acc": 1.0})
    0.0
    """
    if metric:
        return float(values.get(metric, 0.0))
    from rewards import REGISTRY
    acc = [n for n in values if n in REGISTRY and REGISTRY[n].accuracy]
    trained = [n for n in acc if (weights or {}).get(n, 1.0) != 0]
    return float(sum(values[n] for n in (trained or acc)))


def group_spread(batch: Batch, metric: str | None, weights: dict | None = None) -> dict[str, float]:
    """Population standard deviation of the task metric within each prompt's group."""
    by_prompt: dict[str, list[float]] = {}
    for r in batch.rollouts:
        by_prompt.setdefault(r.prompt.id, []).append(task_metric(batch.scored[r.key]["values"], metric, weights))
    out = {}
    for pid, xs in by_prompt.items():
        m = sum(xs) / len(xs)
        out[pid] = math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))
    return out


def signal_frac(batch: Batch, metric: str | None, min_std: float, weights: dict | None = None) -> float:
    """Share of ``batch``'s groups whose ``metric`` has spread above ``min_std``: the groups that
    carry a policy gradient (logged with dynamic sampling off too, judged the same way)."""
    spread = group_spread(batch, metric, weights).values()
    return sum(s > min_std for s in spread) / max(1, len(spread))


def merge(batches: list[Batch]) -> Batch:
    """One batch of every group of ``batches`` (same step and weights), in order."""
    first = batches[0]
    times = dict(first.times)
    for b in batches[1:]:
        for k in ("rollout", "reward"):
            times[k] = times.get(k, 0.0) + b.times.get(k, 0.0)
        for k in ("engine_restarts", "reward_recoveries", "queue_depth"):
            if k in b.times:
                times[k] = b.times[k]  # cumulative counters / the latest depth
    failures: dict[str, int] = {}
    for b in batches:
        for k, v in b.failures.items():
            failures[k] = failures.get(k, 0) + v
    return Batch(first.step, [p for b in batches for p in b.prompts], [r for b in batches for r in b.rollouts],
                 {k: v for b in batches for k, v in b.scored.items()}, failures,
                 min(b.version for b in batches), times, dict(first.rules))


def select(batch: Batch, prompt_ids: list[str]) -> Batch:
    """The groups of ``prompt_ids``, in that order (parse failures stay whole-step counts)."""
    by_id = {p.id: p for p in batch.prompts}
    order = {pid: i for i, pid in enumerate(prompt_ids)}
    rollouts = sorted((r for r in batch.rollouts if r.prompt.id in order), key=lambda r: (order[r.prompt.id], r.sample))
    return Batch(batch.step, [by_id[i] for i in prompt_ids], rollouts, {r.key: batch.scored[r.key] for r in rollouts},
                 dict(batch.failures), batch.version, dict(batch.times), dict(batch.rules))


class DynamicSampler:
    def __init__(self, prompts_per_step: int, min_std: float, max_rounds: int, metric: str | None = None):
        if min_std < 0 or max_rounds < 0:
            raise ValueError("rollout.dynamic_sampling: min_std and max_rounds must be >= 0")
        self.B, self.min_std, self.max_rounds, self.metric = prompts_per_step, min_std, max_rounds, metric

    def fill(self, first: Batch, more: Callable[[int], Batch | None], weights: dict | None = None) -> Batch:
        """``first``'s groups with spread, refilled through ``more(n)`` (a scored batch of the next
        ``n`` prompts, or None when the data is used up) until there are ``prompts_per_step``;
        completed with dropped groups if the rounds run out. Its ``times`` carry the counts.
        ``weights``: the step's reward weights (``task_metric``)."""
        pool, rounds, exhausted = first, 0, False
        spread = group_spread(first, self.metric, weights)
        kept = [p.id for p in first.prompts if spread[p.id] > self.min_std]
        first_kept = len(kept)
        while len(kept) < self.B and rounds < self.max_rounds:
            extra = more(self.B - len(kept))
            if extra is None:
                exhausted = True
                break
            rounds += 1
            pool = merge([pool, extra])
            s = group_spread(extra, self.metric, weights)
            spread.update(s)
            kept += [p.id for p in extra.prompts if s[p.id] > self.min_std]
        with_signal = len(kept)
        chosen = kept[:self.B]  # refills ask for the missing count only: never more than B
        if len(chosen) < self.B:  # out of rounds or data: complete the step with groups that have none
            chosen += [p.id for p in pool.prompts if p.id not in set(chosen)][:self.B - len(chosen)]
        out = select(pool, chosen)
        out.times.update({"sampling/first_kept_frac": first_kept / max(1, len(first.prompts)),
                          "sampling/kept_frac": with_signal / max(1, len(pool.prompts)),
                          "sampling/signal_frac": min(with_signal, self.B) / self.B,
                          "sampling/rounds": rounds, "sampling/prompts_generated": len(pool.prompts),
                          "sampling/extra_generations": (len(pool.prompts) - self.B) * (len(first.rollouts)
                                                                                       // max(1, len(first.prompts))),
                          "sampling/filled": self.B - min(with_signal, self.B), "sampling/data_exhausted": int(exhausted)})
        return out
