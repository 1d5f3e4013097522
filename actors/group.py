"""Create N actors of one plain class on a placement group, and call them together.

    group = ActorGroup(Learner, n=2, bundle={"CPU": 1}, name="learner", env={...})
    refs = group.call("setup", addr, port)          # one ref per actor
    refs = group.call_sharded("train", items)        # items split into n contiguous shards

Every ``ray.get`` of the system lives in ``orchestrator.py``, ``trainer/`` (roles, checkpoints,
modes) or here, so remote hops stay visible.
"""
from __future__ import annotations

from typing import Any, Sequence

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy


_ROLE_OF: dict[str, str] = {}  # actor id (hex) -> group name, for every actor a group started
_OPEN: list[ActorGroup] = []  # the groups this process started and has not shut down


class RoleHung(RuntimeError):
    """An actor of a group gave no answer within the group's call timeout: treated like a dead one."""

    def __init__(self, role: str, message: str):
        super().__init__(message)
        self.role = role


def role_of(error: BaseException) -> str | None:
    """The group name (``learner``, ``rollout``, ...) of the actor a ``RayActorError`` (or a
    ``RoleHung``) is about."""
    if isinstance(error, RoleHung):
        return error.role
    actor_id = getattr(error, "actor_id", None)
    return _ROLE_OF.get(actor_id) if actor_id else None


def shard(items: Sequence, n: int) -> list[list]:
    """Split ``items`` into ``n`` contiguous shards whose sizes differ by at most one."""
    k, r = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        end = start + k + (1 if i < r else 0)
        out.append(list(items[start:end]))
        start = end
    return out


class ActorGroup:
    """``n`` actors of ``cls``, one per placement-group bundle (``bundle`` resources each).

    ``kwargs_fn(i)`` adds per-actor keyword arguments (a rank, an engine index). A driver wait on
    the group (``get``) lasts at most ``call_timeout_s``, or ``startup_timeout_s`` for what belongs
    to an actor's start-up (loading a model, joining a process group); None: for ever."""

    def __init__(self, cls: type, n: int, bundle: dict[str, float], name: str, args: tuple = (),
                 kwargs: dict | None = None, env: dict[str, str] | None = None, strategy: str = "PACK",
                 timeout_s: float = 120.0, max_restarts: int = 0, kwargs_fn=None, call_timeout_s: float | None = None,
                 startup_timeout_s: float | None = None):
        self.name, self.n, self.call_timeout_s = name, n, call_timeout_s
        self.startup_timeout_s = call_timeout_s if startup_timeout_s is None else startup_timeout_s
        bundle = {k: v for k, v in bundle.items() if v}
        have = ray.cluster_resources()
        missing = [k for k in bundle if k not in have and k != "memory"]
        if missing:  # an actor asking for a resource no node declares would wait forever, silently
            raise RuntimeError(f"'{name}' asks for {missing} but no node of the cluster declares "
                               f"{'it' if len(missing) == 1 else 'them'} (cluster: {sorted(have)}); start nodes "
                               f"with e.g. `ray start --resources '{{\"{missing[0]}\": 1}}'` or change {name}.resources")
        self.pg = placement_group([dict(bundle) for _ in range(n)], strategy=strategy, name=f"{name}-pg")
        ready, _ = ray.wait([self.pg.ready()], timeout=timeout_s)
        if not ready:
            remove_placement_group(self.pg)
            raise RuntimeError(
                f"could not place {n} x {bundle} for '{name}' within {timeout_s:.0f}s: the cluster has "
                f"{ray.available_resources()} free. Lower the cluster.* / {name} resources or add nodes.")
        self._remote_cls, self._args, self._kwargs = ray.remote(cls), args, dict(kwargs or {})
        self._opts, self._per = [], []  # each actor's options and own keyword arguments
        for i in range(n):
            self._opts.append(dict(
                num_cpus=bundle.get("CPU", 0), num_gpus=bundle.get("GPU", 0),
                resources={k: v for k, v in bundle.items() if k not in ("CPU", "GPU", "memory")} or None,
                scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=self.pg, placement_group_bundle_index=i),
                runtime_env={"env_vars": dict(env or {})}, max_restarts=max_restarts))
            self._per.append(kwargs_fn(i) if kwargs_fn else {})
        self.actors = [self._spawn(i, 0) for i in range(n)]
        self.replacements = 0
        self.info: dict = {}  # what the role reported at start-up (set by trainer/roles.py)
        _OPEN.append(self)

    def call(self, method: str, *args: Any, **kwargs: Any) -> list[ray.ObjectRef]:
        """The same call on every actor."""
        return [getattr(a, method).remote(*args, **kwargs) for a in self.actors]

    def call_each(self, method: str, per_actor_args: Sequence[tuple]) -> list[ray.ObjectRef]:
        """Actor i gets ``*per_actor_args[i]``."""
        return [getattr(a, method).remote(*args) for a, args in zip(self.actors, per_actor_args)]

    def call_sharded(self, method: str, items: Sequence, *args: Any) -> list[ray.ObjectRef]:
        """Actor i gets shard i of ``items`` (contiguous, sizes differ by at most one)."""
        return [getattr(a, method).remote(part, *args) for a, part in zip(self.actors, shard(items, self.n))]

    def get(self, refs, what: str, startup: bool = False):
        """``ray.get(refs)``, waiting at most ``call_timeout_s`` (``startup``: ``startup_timeout_s``;
        None: for ever); past it the group is taken for hung (``RoleHung``), which the driver treats
        like a dead actor."""
        timeout = self.startup_timeout_s if startup else self.call_timeout_s
        try:
            return ray.get(refs, timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            raise RoleHung(self.name, f"a {self.name} rank gave no answer to {what} within {timeout:g}s") from None

    def replace(self, i: int):
        """Kill actor ``i`` (dead or hung) and start a fresh one in its bundle; returns the new actor."""
        _kill(self.actors[i])
        self.replacements += 1
        self.actors[i] = self._spawn(i, self.replacements)
        return self.actors[i]

    def _spawn(self, i: int, generation: int):
        name = f"{self.name}-{i}" + (f"-r{generation}" if generation else "")
        actor = self._remote_cls.options(**self._opts[i], name=name).remote(*self._args, **self._kwargs, **self._per[i])
        return _registered(self.name, actor)

    def reinit(self, kwargs: dict) -> list:
        """Build every actor afresh in its own process from new constructor keyword arguments (the
        class's ``reinit``; a process that has loaded the modules starts in seconds: see
        ``trainer.session``); a replacement started later is built from them too. Returns the
        actors' answers."""
        self._kwargs = dict(kwargs)
        return self.get([a.reinit.remote(**self._kwargs, **per) for a, per in zip(self.actors, self._per)],
                        "reinit", startup=True)

    def shutdown(self) -> None:
        """Kill every actor and remove the placement group (what is already gone, or belonged to a
        Ray session that has ended, is skipped)."""
        for a in self.actors:
            _kill(a)
        try:
            remove_placement_group(self.pg)
        except Exception:  # noqa: BLE001 - already removed, or its session ended
            pass
        if self in _OPEN:
            _OPEN.remove(self)


def _kill(actor) -> None:
    """Kill ``actor`` for good; one already gone (dead, or of a Ray session that has ended) is fine."""
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # noqa: BLE001 - already gone
        pass


def open_groups() -> list[ActorGroup]:
    """The groups this process started and has not shut down."""
    return list(_OPEN)


def shutdown_groups(keep=()) -> int:
    """Shut down every group this process started and has not shut down, but those in ``keep``
    (dead, hung or alive: a run restarting its learner ranks keeps Ray, its engines and its reward
    workers up); returns how many."""
    groups = [g for g in _OPEN if not any(g is k for k in keep)]
    for group in groups:
        group.shutdown()
    return len(groups)


def _registered(name: str, actor):
    _ROLE_OF[actor._actor_id.hex()] = name
    return actor
