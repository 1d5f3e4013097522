"""Runs one after another in one process and one Ray, each run's engine and learner processes kept
for the next: an experiment of many short runs (``bench.learning``'s twenty-odd stages, the test
suite's in-process launches) pays a role's start-up once instead of once per run.

    session = Session(home)
    orchestrator.main(["conf=rec", "trainer.output_dir=a"], session=session)           # Ray starts here
    orchestrator.main(["mode=eval", "conf=rec", "model.path=a/...", ...], session=session)  # same engine process
    session.close()                                                                    # Ray stops

A role's start-up is mostly imports: a rollout engine's ~15 s on a 2-core CPU are about 12 of
``import vllm`` and the imports inside vLLM's ``LLM`` (a second ``LLM`` in a process that has made
one starts in about 3), a learner rank's ~8 mostly torch, transformers and DeepSpeed. So after a
run the session keeps its engine and its learner rank when each is a group of one actor, and the
next run builds each afresh in the same process with its own model and settings
(``ActorGroup.reinit``: the class's ``reinit``, then the learner's usual ``setup``), exactly as a new
actor would be built. A run whose groups differ in what a process carries from its start (the
number of actors, their resources, threads or environment) gets new ones; every other group
(reward workers, groups of several actors) is shut down after each run, and after a run that failed
everything is.
"""
from __future__ import annotations

import pathlib

import ray

from actors.group import ActorGroup, RoleHung, open_groups
from trainer import cluster, roles


def _key(placement: tuple[int, dict, dict[str, str]]) -> tuple:
    """What a role's processes carry from their start (``trainer.roles.engine_placement``: count,
    resources, environment with threads), hashable: a kept group serves a run with the same."""
    n, bundle, env = placement
    return n, tuple(sorted(bundle.items())), tuple(sorted(env.items()))


class Session:
    """Several runs in this process on one Ray (``orchestrator.main(argv, session=...)``). ``home``:
    the directory under whose ``ray/`` a private Ray started by the first run keeps its files
    (default: that run's directory).
    A Ray already up in this process (a test module's) is used as it is and left up by ``close``."""

    def __init__(self, home: pathlib.Path | None = None):
        self.home = home
        self.kept: dict[str, tuple[tuple, ActorGroup]] = {}  # role -> (key, group) the last run left up
        self._now: dict[str, tuple] = {}  # role -> key, for the roles the current run asked for
        self._owns_ray, self._address = False, None
        self.reused = 0  # processes a run was given instead of starting new ones

    def start(self, cfg, out_dir: pathlib.Path) -> dict[str, str]:
        """Ray for a run (started or joined by the first, as ``trainer.cluster.start`` does); returns
        the environment of every actor."""
        if not ray.is_initialized():
            self.kept.clear()  # (the processes of an earlier Ray are gone with it)
            env = cluster.start(cfg, pathlib.Path(self.home or out_dir))
            self._owns_ray, self._address = True, (cfg.cluster.address, cfg.cluster.num_cpus)
            return env
        if self._address is not None and (cfg.cluster.address, cfg.cluster.num_cpus) != self._address:
            raise ValueError(f"this session's Ray was started with cluster.address={self._address[0]!r}, "
                             f"cluster.num_cpus={self._address[1]}; a run in it cannot change them "
                             "(start another session)")
        return cluster.actor_env(cfg)

    def _take(self, role: str, key: tuple) -> ActorGroup | None:
        self._now[role] = key
        old_key, group = self.kept.pop(role, (None, None))
        if group is not None and (old_key != key or not any(g is group for g in open_groups())):
            group.shutdown()
            return None
        return group

    def _rebuilt(self, group: ActorGroup | None, kwargs: dict, timeout_s: float) -> ActorGroup | None:
        if group is None:
            return None
        group.call_timeout_s = timeout_s
        try:
            group.reinit(kwargs)
        except (ray.exceptions.RayActorError, RoleHung) as e:  # gone since the last run: start afresh
            print(f"a kept {group.name} process did not rebuild ({type(e).__name__}); starting a new one", flush=True)
            group.shutdown()
            return None
        self.reused += len(group.actors)
        return group

    def engines(self, cfg, model_path: str, env: dict[str, str]) -> ActorGroup | None:
        """The kept rollout engine, built afresh for this run (``cfg`` resolved), or None: the run
        starts its own (``trainer.roles.create_engines``)."""
        group = self._take("rollout", _key(roles.engine_placement(cfg, env, cluster.has_gpu())))
        return self._rebuilt(group, roles.engine_kwargs(cfg, model_path), cfg.rollout.timeout_s)

    def learners(self, cfg, model_path: str, per_rank_items: int, env: dict[str, str]) -> ActorGroup | None:
        """The kept learner rank, constructed afresh for this run, or None (``create_learners`` then
        starts one; either way it then runs ``setup``)."""
        group = self._take("learner", _key(roles.learner_placement(cfg, env, cluster.has_gpu())))
        return self._rebuilt(group, roles.learner_kwargs(cfg, model_path, per_rank_items), cfg.learner.timeout_s)

    def groups(self, cfg, model_path: str, env: dict[str, str]) -> dict:
        """``engines`` and ``learners`` for ``trainer.roles.create_roles`` (a GRPO run)."""
        return {"engines": self.engines(cfg, model_path, env),
                "learners": self.learners(cfg, model_path, roles.items_per_rank(cfg), env)}

    def end_run(self, failed: bool = False) -> None:
        """After a run: keep its engine and its learner rank (a group of one actor each) for the next
        and shut every other group down; after a failed run, shut everything down."""
        waiting = [g for _, g in self.kept.values()]  # kept by an earlier run, not asked for by this one
        for group in open_groups():
            if any(group is g for g in waiting):
                continue
            role = group.name
            if not failed and role in self._now and role not in self.kept and len(group.actors) == 1:
                self.kept[role] = (self._now[role], group)
            else:
                group.shutdown()
        self._now = {}
        if failed:
            self.release()

    def release(self) -> None:
        """Shut the kept processes down (for a run that places actors of its own)."""
        for _, group in self.kept.values():
            group.shutdown()
        self.kept.clear()

    def close(self) -> None:
        """Shut the kept processes down, and Ray if the session started it."""
        self.release()
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray, self._address = False, None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

