"""Reward workers: CPU-only Ray actors that score completions with ``rewards.REGISTRY``.

A worker owns nothing but its configuration. ``score`` takes a chunk of completions (text,
solution, per-row accuracy method, image sizes) and returns, per completion, the weighted total,
each reward's value and any parse failures, plus per-reward failure counts for the chunk.
"""
from __future__ import annotations

import collections
import os
from dataclasses import dataclass

from rewards import mathcheck
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
    def __init__(self, funcs: dict[str, float], box_convention: str = "vlm_r1", params: dict | None = None,
                 budget_s: float | None = None):
        """``budget_s``: the time a chunk's ``math_verify`` answers may take together (half of
        ``reward.timeout_s``: a chunk of hostile answers must not look like a hung worker)."""
        from rewards import validate_params
        self.budget_s = budget_s
        self.funcs = dict(funcs)
        self.box_convention = box_convention
        self.params = validate_params(params or {})  # reward -> {parameter: value}

    def score(self, tasks: list[ScoreTask], rules=None) -> dict:
        """``{"keys", "totals", "values", "failures"}`` for the chunk, in input order; ``failures``
        counts parse failures as ``{"reward/reason": n}``. ``rules`` (``rewards.schedule.Rules``: the
        weights and parameters of the step being scored) replaces the configured ones when given."""
        funcs, params = (self.funcs, self.params) if rules is None else (rules.funcs, rules.params)
        totals, values, failures = [], [], collections.Counter()
        with mathcheck.CHECKER.budget(self.budget_s):  # (by module: a subclass pickled by value stays picklable)
            for t in tasks:
                s = score_one(t.completion, t.solution, funcs, t.accu_method, params, image_size=t.image_size,
                              input_size=t.input_size, box_convention=self.box_convention)
                totals.append(s.total)
                values.append(s.values)
                failures.update(f"{name}/{reason}" for name, reason in s.failures.items())
        return {"keys": [t.key for t in tasks], "totals": totals, "values": values, "failures": dict(failures)}

    def pid(self) -> int:
        return os.getpid()

    def cpu_seconds(self) -> float:
        """CPU time this process has used, every thread included (for the utilisation figure)."""
        import time
        return time.process_time()


def tasks_from_rollouts(rollouts) -> list[ScoreTask]:
    """Score tasks for rollouts (first image's sizes drive box rescaling, as in VLM-R1)."""
    out = []
    for r in rollouts:
        p = r.prompt
        out.append(ScoreTask(r.key, r.completion_text, p.solution, p.accu_method,
                             p.image_sizes[0] if p.image_sizes else None, r.input_sizes[0] if r.input_sizes else None))
    return out


class ScorerPool:
    """Driver side: spreads completions over the reward workers in chunks and collects every
    completion exactly once. A worker that dies, or shows no progress for ``timeout_s`` while it has
    chunks queued, is replaced and all its chunks are scored again on the workers; after
    ``max_attempts`` on one chunk the run stops with the chunk's keys (a completion that kills every
    worker).

    "No progress" is measured per worker from the later of: the chunk's submission, the worker's
    last finished chunk, and (for a replacement) the moment it answered that it is up. So queueing
    behind a slow chunk, or a replacement's start-up on a loaded machine, is never taken for a hang;
    a replacement that does not come up within ``start_timeout_s`` is itself treated as hung."""

    def __init__(self, group, chunk: int, timeout_s: float, max_attempts: int = 3, start_timeout_s: float | None = None):
        self.group, self.chunk, self.timeout_s, self.max_attempts = group, chunk, timeout_s, max_attempts
        self.start_timeout_s = max(60.0, 3 * timeout_s) if start_timeout_s is None else start_timeout_s
        self.pending: dict = {}  # ref -> (tasks, worker index, actor handle, submit time, attempt, rules)
        self.alive: dict = {}  # actor id -> last time the worker finished a chunk or came up
        self.starting: dict = {}  # readiness ref of a replacement -> (actor id, spawn time)
        self.next = 0
        self.recovered = 0

    def submit(self, rollouts, rules=None) -> None:
        """Score ``rollouts`` (with ``rules``, the step's scheduled weights and parameters, if any)."""
        tasks = tasks_from_rollouts(rollouts)
        for i in range(0, len(tasks), self.chunk):
            self._send(tasks[i:i + self.chunk], 1, rules)

    def _send(self, tasks, attempt: int, rules) -> None:
        import time
        i = self.next % self.group.n
        self.next += 1
        actor = self.group.actors[i]
        self.pending[actor.score.remote(tasks, rules)] = (tasks, i, actor, time.monotonic(), attempt, rules)

    def _deadline(self, entry) -> float:
        _, _, actor, submitted, _, _ = entry
        aid = actor._actor_id
        for ref, (sid, spawned) in self.starting.items():
            if sid == aid:  # a replacement still starting: its own (longer) start-up clock
                return spawned + self.start_timeout_s
        return max(submitted, self.alive.get(aid, submitted)) + self.timeout_s

    def _recover(self, refs: list, why: str) -> None:
        """Replace the workers behind ``refs`` (each once) and resend every chunk queued on them."""
        import time
        dead = {self.pending[r][2]._actor_id for r in refs}
        for ref in [r for r, v in self.pending.items() if v[2]._actor_id in dead]:
            tasks, i, actor, _, attempt, rules = self.pending.pop(ref)
            if attempt >= self.max_attempts:
                raise RuntimeError(f"reward chunk {[t.key for t in tasks][:4]}... failed {attempt} times (last: worker "
                                   f"{why}); a completion in it may crash the reward code: see the worker logs")
            if self.group.actors[i] is actor:  # not yet replaced for an earlier chunk
                print(f"reward worker {i} {why}: replacing it and rescoring its chunks", flush=True)
                new = self.group.replace(i)
                self.starting = {r: v for r, v in self.starting.items() if v[0] != actor._actor_id}
                self.starting[new.pid.remote()] = (new._actor_id, time.monotonic())
            self.recovered += 1
            self._send(tasks, attempt + 1, rules)

    def collect(self) -> tuple[dict, dict]:
        """({key: {"total", "values"}}, {reward/reason: parse-failure count}) for everything submitted."""
        import time

        import ray
        out, failures = {}, collections.Counter()
        while self.pending:
            deadline = min(self._deadline(v) for v in self.pending.values())
            ready, _ = ray.wait(list(self.pending) + list(self.starting), num_returns=1,
                                timeout=max(0.05, deadline - time.monotonic()))
            if not ready:
                now = time.monotonic()
                self._recover([r for r, v in self.pending.items() if now >= self._deadline(v)],
                              f"showed no progress for {self.timeout_s:.0f}s (reward.timeout_s)")
                continue
            ref = ready[0]
            if ref in self.starting:  # a replacement is up: its chunks' clocks start now
                aid, _ = self.starting.pop(ref)
                try:
                    ray.get(ref)
                    self.alive[aid] = time.monotonic()
                except ray.exceptions.RayActorError:
                    pass  # died while starting: its chunks fail and are recovered below
                continue
            try:
                res = ray.get(ref)
            except ray.exceptions.RayActorError:
                self._recover([ref], "died")
                continue
            self.alive[self.pending.pop(ref)[2]._actor_id] = time.monotonic()
            for key, total, values in zip(res["keys"], res["totals"], res["values"]):
                if key in out:
                    raise RuntimeError(f"completion {key} was scored twice")
                out[key] = {"total": total, "values": values}
            failures.update(res["failures"])
        return out, dict(failures)
