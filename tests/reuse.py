"""The engine and learner rank the suite's in-process launches reuse: one process each, built afresh
for every launch.

A role's start-up is mostly imports: a rollout engine's 15 seconds here are about 12 of ``import
vllm`` and the imports inside vLLM's ``LLM`` (a second ``LLM`` in the same process starts in about 3),
a learner rank's 8 mostly torch, transformers and DeepSpeed. So the launches of ``shared_ray``
(tests/conftest.py) keep their engine and learner actors and give them the next launch's model and
settings (``reinit``): each is then built exactly as a new actor would build it (the class's own
``__init__``, and the learner's ``setup``), in a process whose modules are already loaded. A launch
whose groups differ in what the processes themselves carry (their number, resources or threads)
starts new ones. (A reused group would replace a dead actor with the first launch's arguments: the
launches that reuse never kill one; the fault tests build their own roles.)
"""
from __future__ import annotations

import gc

from actors.rollout import RolloutEngine
from learner.learner import Learner


class ReusableEngine(RolloutEngine):
    def reinit(self, **kwargs) -> float:
        """Drop this engine's ``LLM`` (and vLLM's per-process distributed state), then build the
        engine afresh from ``RolloutEngine``'s arguments (``trainer.roles.engine_kwargs``). Returns the new engine's start-up seconds."""
        from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel
        self.__dict__.clear()
        gc.collect()
        destroy_model_parallel()
        destroy_distributed_environment()
        RolloutEngine.__init__(self, **kwargs)
        return self.start_s


class ReusableLearner(Learner):
    def reinit(self, **kwargs) -> None:
        """Drop this rank's model, optimizer and weight-sync group, then construct it afresh (the
        driver then calls ``setup``, which keeps the process group of the first: one rank;
        ``trainer.roles.learner_kwargs``)."""
        self.__dict__.clear()
        gc.collect()
        Learner.__init__(self, **kwargs)


def group_keys(cfg) -> tuple[tuple, tuple]:
    """What the engine and the learner processes carry from their start: a group is reused only by a
    launch with one actor in it and the same resources and thread settings."""
    from trainer.roles import _threads
    r, lc = cfg.rollout, cfg.learner
    return ((r.num_engines, r.cpus_per_engine, r.devices_per_engine, tuple(sorted(dict(r.resources).items())),
             tuple(sorted(_threads(cfg, r, "rollout").items()))),
            (lc.world_size, lc.cpus_per_rank, lc.gpus_per_rank, tuple(sorted(dict(lc.resources).items())),
             tuple(sorted(_threads(cfg, lc, "learner").items()))))
