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
    def __init__(self, funcs: dict[str, float], box_convention: str = "vlm_r1", params: dict | None = None):
        from rewards import validate_params
        self.funcs = dict(funcs)
        self.box_convention = box_convention
        self.params = validate_params(params or {})  # reward -> {parameter: value}

    def score(self, tasks: list[ScoreTask], rules=None) -> dict:
        """``{"keys", "totals", "values", "failures"}`` for the chunk, in input order; ``failures``
        counts parse failures as ``{"reward/reason": n}``. ``rules`` (``rewards.schedule.Rules``: the
        weights and parameters of the step being scored) replaces the configured ones when given."""
        funcs, params = (self.funcs, self.params) if rules is None else (rules.funcs, rules.params)
        totals, values, failures = [], [], collections.Counter()
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
    completion exactly once. A worker that dies mid-chunk, or takes longer than ``timeout_s`` on
    one, is replaced and its chunk is scored again on the next worker; after ``max_attempts`` on
    one chunk the run stops with the chunk's keys (a completion that kills every worker)."""

    def __init__(self, group, chunk: int, timeout_s: float, max_attempts: int = 3):
        self.group, self.chunk, self.timeout_s, self.max_attempts = group, chunk, timeout_s, max_attempts
        self.pending: dict = {}  # ref -> (tasks, worker index, actor handle, submit time, attempt, rules)
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

    def _recover(self, refs: list, why: str) -> None:
        """Replace the worker behind ``refs`` (once, whoever noticed first) and resend their chunks."""
        for ref in refs:
            tasks, i, actor, _, attempt, rules = self.pending.pop(ref)
            if attempt >= self.max_attempts:
                raise RuntimeError(f"reward chunk {[t.key for t in tasks][:4]}... failed {attempt} times (last: worker "
                                   f"{why}); a completion in it may crash the reward code: see the worker logs")
            if self.group.actors[i] is actor:  # not yet replaced by an earlier failure
                print(f"reward worker {i} {why}: replacing it and rescoring its chunks", flush=True)
                self.group.replace(i)
            self.recovered += 1
            self._send(tasks, attempt + 1, rules)

    def collect(self) -> tuple[dict, dict]:
        """({key: {"total", "values"}}, {reward/reason: parse-failure count}) for everything submitted."""
        import time

        import ray
        out, failures = {}, collections.Counter()
        while self.pending:
            deadline = min(v[3] for v in self.pending.values()) + self.timeout_s
            ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=max(0.05, deadline - time.monotonic()))
            if not ready:
                now = time.monotonic()
                self._recover([r for r, v in self.pending.items() if now - v[3] >= self.timeout_s],
                              f"hung for {self.timeout_s:.0f}s (reward.timeout_s)")
                continue
            try:
                res = ray.get(ready[0])
            except ray.exceptions.RayActorError:
                self._recover([ready[0]], "died")
                continue
            self.pending.pop(ready[0])
            for key, total, values in zip(res["keys"], res["totals"], res["values"]):
                if key in out:
                    raise RuntimeError(f"completion {key} was scored twice")
                out[key] = {"total": total, "values": values}
            failures.update(res["failures"])
        return out, dict(failures)
