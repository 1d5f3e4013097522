"""Dynamic sampling (DAPO): train only on groups whose raw task metric has spread.

A group whose G samples all score the same has zero advantage everywhere: it costs a generation
and a learner pass and moves nothing. With ``rollout.dynamic_sampling.enabled`` each step keeps
the groups whose *raw task metric* (the accuracy rewards' values -- ``rec_iou``, ``ovd_map``...,
or the reward named in ``metric``; never the shaped total, whose format or length terms can give a
group spread its task metric does not have) has a population standard deviation above ``min_std``
(not the group mean: under a continuous reward such as IoU, identical boxes give zero spread at
any mean). Missing groups are refilled with fresh prompts from the data order in up to
``max_rounds`` refills per engine; a prompt is kept with probability q = 1 - p^G - (1-p)^G, so a
kept group costs 1/q prompts' generation on average.

    ds = DynamicSampler(prompts_per_step=4, min_std=0.01, max_rounds=3, metric=None)
    batch = ds.fill(first_batch, more=lambda n: generate(next n prompts) or None)   # round by round
    step = ds.start(weights); n = step.landed(part, engine)                         # streaming

Streaming (``trainer.pipeline.generate_batch``): each engine's shard is scored and judged as it
lands, and that engine is handed its refill at once, while the others are still generating; no
engine waits for a round to end. A refill asks for the groups still missing, less those the prompts
still generating may give (each counted as one group, or at the running rate with ``auto``).

``oversample`` sizes requests: 1 (default) asks for exactly the missing count, so no surplus group
exists; ``auto`` asks for missing / rate (the share of groups with spread over the last 10 steps),
so one generation call usually fills the step: fewer, larger calls, which on engines whose decode
cost is per step rather than per sequence is cheaper than a second round. A surplus is dropped
(``sampling/surplus``), never carried into a later step, where it would be one update staler than
``trainer.max_staleness`` allows. When the rounds are used up (or the data is), the step is
completed with the dropped groups, which add no policy gradient, so every step keeps its shape;
that is counted, never a crash.
"""
from __future__ import annotations

import math
from typing import Callable

from rewards import REGISTRY, resolve
from samples import Batch


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
                 min(b.version for b in batches), times, dict(first.rules),
                 {k: v for b in batches for k, v in b.refused.items()})


def select(batch: Batch, prompt_ids: list[str]) -> Batch:
    """The groups of ``prompt_ids``, in that order (parse failures stay whole-step counts)."""
    by_id = {p.id: p for p in batch.prompts}
    order = {pid: i for i, pid in enumerate(prompt_ids)}
    rollouts = sorted((r for r in batch.rollouts if r.prompt.id in order), key=lambda r: (order[r.prompt.id], r.sample))
    return Batch(batch.step, [by_id[i] for i in prompt_ids], rollouts, {r.key: batch.scored[r.key] for r in rollouts},
                 dict(batch.failures), batch.version, dict(batch.times), dict(batch.rules), dict(batch.refused))


class DynamicSampler:
    """One run's dynamic sampling: ``start(weights)`` opens a step's ``Fill``; the share of
    generated groups that had spread over the last ``window`` steps (``rate``) sizes requests with
    ``oversample: auto`` and tells a streaming fill how many of the prompts still generating will
    be kept."""

    window = 10  # steps the running signal rate is taken over

    def __init__(self, prompts_per_step: int, min_std: float, max_rounds: int, metric: str | None = None,
                 oversample: float | str = 1.0):
        if min_std < 0 or max_rounds < 0:
            raise ValueError("rollout.dynamic_sampling: min_std and max_rounds must be >= 0")
        if oversample != "auto" and not (isinstance(oversample, (int, float)) and oversample >= 1):
            raise ValueError(f"rollout.dynamic_sampling.oversample={oversample!r}: auto or a number >= 1")
        self.B, self.min_std, self.max_rounds, self.metric = prompts_per_step, min_std, max_rounds, metric
        self.oversample = oversample
        self.recent: list[tuple[int, int]] = []  # (groups with spread, groups generated) of the last steps

    @property
    def rate(self) -> float:
        """Share of generated groups with spread over the last ``window`` steps (1.0 before any)."""
        kept, generated = (sum(x) for x in zip(*self.recent)) if self.recent else (0, 0)
        return kept / generated if generated else 1.0

    def factor(self) -> float:
        """Prompts generated per missing group: ``oversample``, or (auto) 1/rate, at most 4."""
        if self.oversample == "auto":
            return min(4.0, 1.0 / max(self.rate, 0.25))
        return float(self.oversample)

    def first_count(self) -> int:
        """Prompts a step starts with: ``prompts_per_step``, times the factor."""
        return math.ceil(self.B * self.factor() - 1e-9)

    def replay(self, history: list[dict]) -> None:
        """A resumed run: the running rate from the saved rows, as the uninterrupted run had it."""
        self.recent = [(int(r["sampling/groups_with_signal"]), int(r["sampling/prompts_generated"]))
                       for r in history if "sampling/groups_with_signal" in r][-self.window:]

    def start(self, weights: dict | None = None, first_count: int | None = None) -> "Fill":
        """A step's fill; ``weights``: the step's reward weights (``task_metric``)."""
        return Fill(self, weights, self.first_count() if first_count is None else first_count)

    def fill(self, first: Batch, more: Callable[[int], Batch | None], weights: dict | None = None) -> Batch:
        """``first``'s groups with spread, refilled round by round through ``more(n)`` (a scored
        batch of the next ``n`` prompts, or None when the data is used up) until there are
        ``prompts_per_step``; completed with dropped groups if the rounds run out. Its ``times``
        carry the counts. (A streaming fill feeds ``Fill.landed`` as each engine's shard lands.)"""
        step = self.start(weights, len(first.prompts))
        parts, n = [first], step.landed(first)
        while n:
            extra = more(n)
            if extra is None:
                step.unfilled(n)
                break
            parts.append(extra)
            n = step.landed(extra)
        return step.result(merge(parts))


class Fill:
    """One step of dynamic sampling, fed each scored part as it lands (``landed``: how many new
    prompts that part's engine should generate next) and closed by ``result``. Each engine gets
    at most ``max_rounds`` refills; a refill asks for the groups still missing, less the prompts still
    generating elsewhere (each worth 1/factor of a group), times the oversample factor: with
    ``oversample: 1`` kept + outstanding never exceeds ``prompts_per_step``, so no surplus, whatever
    order the engines land in."""

    def __init__(self, ds: DynamicSampler, weights: dict | None, first_count: int):
        self.ds, self.weights = ds, weights
        self.spread: dict[str, float] = {}
        self.kept = 0  # groups with spread so far
        self.first_count, self.outstanding = first_count, first_count
        self.rounds: dict[int, int] = {}  # engine -> refills given to it
        self.exhausted = False

    def landed(self, part: Batch, engine: int = 0) -> int:
        """Judge ``part`` (scored groups); the number of new prompts ``engine`` should generate."""
        ds = self.ds
        s = group_spread(part, ds.metric, self.weights)
        self.spread.update(s)
        self.kept += sum(s[p.id] > ds.min_std for p in part.prompts)
        self.outstanding -= len(part.prompts) + len(part.refused)  # (a refused prompt is out, and not kept)
        f = ds.factor()  # prompts per missing group: each prompt still generating is worth 1/f of one
        missing = ds.B - self.kept - max(0, self.outstanding) / f
        if missing <= 1e-9 or self.rounds.get(engine, 0) >= ds.max_rounds or self.exhausted:
            return 0
        n = math.ceil(missing * f - 1e-9)
        self.rounds[engine] = self.rounds.get(engine, 0) + 1
        self.outstanding += n
        return n

    def unfilled(self, n: int, exhausted: bool = True) -> None:
        """``n`` prompts a refill asked for will not be generated (``exhausted``: the data is used up)."""
        self.outstanding -= n
        self.exhausted = self.exhausted or exhausted

    def result(self, pool: Batch) -> Batch:
        """The step's ``prompts_per_step`` groups from ``pool`` (every part that landed): those with
        spread first, in data order; completed with groups without it if too few."""
        ds, B = self.ds, self.ds.B
        kept = [p.id for p in pool.prompts if self.spread.get(p.id, 0.0) > ds.min_std]
        with_signal = len(kept)
        chosen = kept[:B]  # a surplus (oversampling) is dropped, never carried into a staler step
        if len(chosen) < B:  # out of rounds or data: complete the step with groups that have none
            taken = set(chosen)
            chosen += [p.id for p in pool.prompts if p.id not in taken][:B - len(chosen)]
        out = select(pool, chosen)
        G = len(pool.rollouts) // max(1, len(pool.prompts))
        n = len(pool.prompts)
        ds.recent = (ds.recent + [(with_signal, n)])[-ds.window:]
        first = pool.prompts[:self.first_count]  # (the pool is in data order: the first prompts, then refills)
        first_kept = sum(self.spread.get(p.id, 0.0) > ds.min_std for p in first)
        out.times.update({"sampling/first_kept_frac": first_kept / max(1, len(first)),
                          "sampling/kept_frac": with_signal / max(1, n),
                          "sampling/signal_frac": min(with_signal, B) / B,
                          "sampling/groups_with_signal": with_signal,
                          "sampling/rounds": max(self.rounds.values(), default=0),  # the most refills of one engine
                          "sampling/refills": sum(self.rounds.values()), "sampling/prompts_generated": n,
                          "sampling/extra_generations": (n - B) * G,
                          "sampling/surplus": max(0, with_signal - B),
                          "sampling/filled": B - min(with_signal, B), "sampling/data_exhausted": int(self.exhausted)})
        return out


def dynamic_sampler(ds, prompts_per_step: int, history: list) -> tuple[DynamicSampler | None, float, str | None]:
    """``BatchSource``'s dynamic-sampling arguments from the ``rollout.dynamic_sampling`` section:
    the sampler (None when off; a resumed run replays its running rate from ``history``), the
    spread threshold and the judged reward's name (None: the task's accuracy rewards)."""
    metric = resolve(ds.metric) if ds.metric else None
    sampler = None
    if ds.enabled:
        sampler = DynamicSampler(prompts_per_step, ds.min_std, ds.max_rounds, metric, ds.oversample)
        sampler.replay(history)
    return sampler, ds.min_std, metric
