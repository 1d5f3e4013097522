"""Fault injection for the end-to-end tests: the real engine, reward worker and learner classes,
made to die or hang once, on cue. Only the fault is fake; everything else runs for real.

    roles built from FaultyEngine, FaultyRewardWorker, FaultyLearner, with FAULT_DIR=/tmp/f in their env
    /tmp/f/plan.json: {"ENGINE": "exit@2,hang@4", "REWARD": "exit@3", "LEARNER": "exit@3", "BREAK_IMAGE": "<prompt id>"}

The plan is read at each call, so roles that several runs share (built once in a test process:
``tests/trainer/test_run_management.py``) take the plan of the run at hand; with an empty plan (or
none) they are the real classes and nothing more. Calls are counted across every instance of a role
in the run (a count file in ``FAULT_DIR``), so ``exit@2`` kills the engine that serves the 2nd
``generate`` call of the run, and a replacement that regenerates is call 3. Each fault fires at most
once. ``BREAK_IMAGE`` is a real bad input rather than a fake fault: the first time an engine is asked
for that prompt it truncates the prompt's image file, so the engine's own image loading fails on it
(give the run a copy of the data).
"""
from __future__ import annotations

import json
import os
import pathlib
import time

from actors.reward_worker import RewardWorker
from actors.rollout import RolloutEngine
from learner.learner import Learner


def planned(key: str) -> str:
    """What ``FAULT_DIR/plan.json`` plans for ``key`` (ENGINE, REWARD, LEARNER, BREAK_IMAGE), if anything."""
    plan = pathlib.Path(os.environ["FAULT_DIR"]) / "plan.json"
    return json.loads(plan.read_text()).get(key, "") if plan.is_file() else ""


def _fault(role: str) -> str | None:
    """Count this call of ``role``; the fault planned for it (``exit`` / ``hang``), once."""
    root = pathlib.Path(os.environ["FAULT_DIR"])
    counter = root / f"{role}.calls"
    n = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(n))
    for spec in filter(None, planned(role.upper()).split(",")):
        kind, at = spec.split("@")
        if int(at) == n and _first(root / f"{role}.{kind}@{at}.fired"):
            return kind
    return None


def _first(marker: pathlib.Path) -> bool:
    """True for the one process that creates ``marker`` (an exclusive create: two reward workers
    counting the same call number at once cannot both fire)."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def _act(kind: str | None) -> None:
    if kind == "exit":
        os._exit(1)  # like a segfault or an OOM kill: no cleanup, no exception
    if kind == "hang":
        time.sleep(3600)


def _break_image(prompts) -> None:
    """Truncate the image of the prompt the plan names as ``BREAK_IMAGE`` (once per run)."""
    wanted = planned("BREAK_IMAGE")
    for p in prompts:
        p = p[0] if isinstance(p, tuple) else p
        if wanted and p.id == wanted and _first(pathlib.Path(os.environ["FAULT_DIR"]) / "image.broken"):
            path = pathlib.Path(p.images[0])
            path.write_bytes(path.read_bytes()[:40])


class FaultyEngine(RolloutEngine):
    def generate(self, prompts, n=None, greedy=False):
        if not greedy:
            _break_image(prompts)
            _act(_fault("engine"))
        return super().generate(prompts, n, greedy)


class FaultyRewardWorker(RewardWorker):
    def score(self, tasks, rules=None):
        _act(_fault("reward"))
        return super().score(tasks, rules)


class FaultyLearner(Learner):
    def train_step(self, items):
        _act(_fault("learner") if self.rank == 0 else None)
        return super().train_step(items)
