"""Batches between the engines and the learner: generated, scored, waiting to be trained.

    b = generate_batch(engines, scorer_pool, prompts, step=7, version=6, seed=0)   # G samples each, scored
    state = [to_json(b) for b in in_flight]      # into a checkpoint: nothing generated is lost
    in_flight = [from_json(s, prompts_by_id) for s in state]

With ``trainer.max_staleness`` K > 0 the engines generate the batch of step t+K while the learner
trains step t, so up to K scored batches wait here. ``version`` is the number of updates the
generating weights had seen; the learner trains a batch at version ``step``, so its staleness is
``step - version`` (<= K, checked by ``check_staleness``). A checkpoint stores these batches whole
(token ids, texts, engine log-probs, scores) as JSON, so a resumed run trains exactly what the
uninterrupted one would have, without regenerating from weights it no longer has.
"""
from __future__ import annotations

import time
import zlib
from dataclasses import asdict, dataclass, field


def sample_seed(seed: int, step: int, prompt_id: str) -> int:
    """The sampling seed of one prompt at one step: the same in a resumed run as in the original,
    and the same whatever the staleness (a batch is seeded by the step that trains it)."""
    return zlib.crc32(f"{seed}/{step}/{prompt_id}".encode()) & 0x7FFFFFFF


@dataclass
class Batch:
    """One step's prompts with their G scored samples each, in prompt order then sample order."""
    step: int                     # 0-based index of the step that trains it
    prompts: list                 # data.loaders.Prompt
    rollouts: list                # actors.rollout.Rollout, grouped by prompt
    scored: dict                  # (prompt id, sample) -> {"total", "values"}
    failures: dict                # "reward/reason" -> parse-failure count
    version: int                  # updates the generating weights had seen
    times: dict = field(default_factory=dict)  # rollout / reward seconds, queue depth, engine restarts
    rules: dict = field(default_factory=dict)  # the scheduled reward values it was scored with (rule/...)


def generate_batch(engines, scorer_pool, prompts: list, step: int, version: int, seed: int, rules=None,
                   rule_values: dict | None = None) -> Batch:
    """Generate G samples per prompt on the engines (sharded; a dead engine is replaced) and score
    each exactly once, with ``rules`` (the step's scheduled reward weights and parameters; their
    ``rule/...`` scalars in ``rule_values``) if given; scoring starts as each engine's shard lands."""
    t0 = time.perf_counter()
    pairs = [(p, sample_seed(seed, step, p.id)) for p in prompts]
    rollouts = engines.generate(pairs, on_shard=lambda shard: scorer_pool.submit(shard, rules))
    times = {"rollout": time.perf_counter() - t0, "queue_depth": len(scorer_pool.pending),
             "engine_restarts": engines.restarts}
    t0 = time.perf_counter()
    scored, failures = scorer_pool.collect()
    times["reward"] = time.perf_counter() - t0
    times["reward_recoveries"] = scorer_pool.recovered
    position = {p.id: i for i, p in enumerate(prompts)}  # groups of G, in batch order
    rollouts.sort(key=lambda r: (position[r.prompt.id], r.sample))
    if len(rollouts) != len(scored) or any(r.key not in scored for r in rollouts):
        raise RuntimeError(f"step {step + 1}: {len(rollouts)} completions but {len(scored)} scores: one was lost "
                           "or duplicated")
    return Batch(step, list(prompts), rollouts, scored, failures, version, times, dict(rule_values or {}))


class BatchSource:
    """Where each step's batch comes from: the next prompts of the data order, generated and scored
    with the engines' current weights and the step's reward rules (``rewards.schedule``); with
    dynamic sampling (``trainer.sampling.DynamicSampler``), groups without spread are refilled.
    ``source(step)`` is None when the data is used up. Without dynamic sampling the batch still
    logs ``sampling/signal_frac``: the share of its groups whose task metric has spread above
    ``min_std`` (the ones that carry a gradient), judged on ``metric`` as dynamic sampling would."""

    def __init__(self, engines, scorer_pool, train: list, sampler, rules, seed: int, dynamic=None,
                 min_std: float = 0.01, metric: str | None = None):
        self.engines, self.scorer_pool, self.train, self.sampler = engines, scorer_pool, train, sampler
        self.rules, self.seed, self.dynamic, self.min_std, self.metric = rules, seed, dynamic, min_std, metric

    def __call__(self, step: int) -> Batch | None:
        first = self.sampler.next()
        if first is None:
            return None
        now = self.rules.rules(step)
        seen = {self.train[i].id for i in first}

        def generate(indices: list[int]) -> Batch:
            return generate_batch(self.engines, self.scorer_pool, [self.train[i] for i in indices], step,
                                  self.engines.version, self.seed, now if self.rules else None, self.rules.scalars(now))

        def more(n: int) -> Batch | None:  # the next n prompts of the data order not already in this step
            indices = self.sampler.take(n)
            indices = [i for i in indices or [] if self.train[i].id not in seen]
            seen.update(self.train[i].id for i in indices)
            return generate(indices) if indices else None

        batch = generate(first)
        weights = getattr(now, "funcs", None)  # the step's weights: a weight-0 reward is watched, not trained
        if self.dynamic:
            return self.dynamic.fill(batch, more, weights)
        from trainer.sampling import signal_frac
        batch.times["sampling/signal_frac"] = signal_frac(batch, self.metric, self.min_std, weights)
        return batch


def check_staleness(batch: Batch, step: int, max_staleness: int) -> None:
    """Refuse to train ``batch`` at ``step`` unless it belongs to that step and its samples are at most
    ``max_staleness`` updates old (a broken schedule fails loudly instead of training on stale data).

    >>> check_staleness(Batch(3, [], [], {}, {}, version=2), step=3, max_staleness=1)
    >>> check_staleness(Batch(3, [], [], {}, {}, version=1), step=3, max_staleness=1)
    Traceback (most recent call last):
    RuntimeError: step 4: the batch was generated with weights of version 1, 2 updates old; trainer.max_staleness=1
    """
    age = step - batch.version
    if batch.step != step:
        raise RuntimeError(f"step {step + 1}: the pipeline handed over the batch of step {batch.step + 1}")
    if not 0 <= age <= max_staleness:
        raise RuntimeError(f"step {step + 1}: the batch was generated with weights of version {batch.version}, "
                           f"{age} updates old; trainer.max_staleness={max_staleness}")


def to_json(b: Batch) -> dict:
    """A JSON-safe copy of ``b`` (prompts by id; floats round-trip exactly through ``json``)."""
    rollouts = []
    for r in b.rollouts:
        d = asdict(r)
        d.pop("prompt")
        rollouts.append({"prompt_id": r.prompt.id, **d})
    scored = [[k[0], k[1], v["total"], v["values"]] for k, v in b.scored.items()]
    return {"step": b.step, "prompt_ids": [p.id for p in b.prompts], "rollouts": rollouts, "scored": scored,
            "failures": b.failures, "version": b.version, "times": b.times, "rules": b.rules}


def from_json(d: dict, prompts_by_id: dict) -> Batch:
    """The batch ``to_json`` saved; its prompts looked up in this run's training data."""
    from actors.rollout import Rollout
    missing = [i for i in d["prompt_ids"] if i not in prompts_by_id]
    if missing:
        raise SystemExit(f"the checkpoint holds a generated batch for prompts {missing[:3]} that are not in this "
                         "run's training data: resume with the data files the checkpoint was trained on")
    rollouts = []
    for r in d["rollouts"]:
        r = dict(r)
        prompt = prompts_by_id[r.pop("prompt_id")]
        r["input_sizes"] = tuple(tuple(s) for s in r["input_sizes"])
        rollouts.append(Rollout(prompt=prompt, **r))
    scored = {(pid, int(s)): {"total": total, "values": values} for pid, s, total, values in d["scored"]}
    return Batch(int(d["step"]), [prompts_by_id[i] for i in d["prompt_ids"]], rollouts, scored, dict(d["failures"]),
                 int(d["version"]), dict(d["times"]), dict(d.get("rules", {})))
