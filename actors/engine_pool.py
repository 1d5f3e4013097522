"""Driver side of the rollout engines: sharded generation that survives dead and hung engines.

    pool = EnginePool(engines, learners, meta, timeout_s=600)
    pool.connect()                                   # the learner -> engines weight-broadcast group
    pool.attach(new_learners, meta)                  # after a learner restart: the same engines, a new group
    rollouts = pool.generate(pairs, on_shard=score)  # sharded; each shard handed on as it lands
    pool.sync(version=7)                             # push the learner's current weights

A step's prompts are split over the engines. An engine that dies mid-generation, or gives nothing
for ``timeout_s`` (``rollout.timeout_s``), is replaced in its own placement-group bundle; the
weight-broadcast group is rebuilt with every engine, the learner pushes its current weights, and
the shard is generated again with the same per-prompt seeds -- the samples the dead engine would
have drawn, none lost, none twice. A shard that fails ``max_attempts`` times stops the run. The
same happens when an engine dies while receiving weights. Without learners (``mode=eval``) a
replaced engine keeps the weights it loads. A prompt an engine refuses for a reason of its own
(``samples.Refused``: unreadable image, too long) is not an engine fault: it is left out of the
rollouts and listed in ``pool.refused`` (the last call's), and nothing is replaced.
"""
from __future__ import annotations

import time

import ray

from actors.group import shard
from samples import Refused


class EnginePool:
    def __init__(self, engines, learners=None, meta=None, timeout_s: float = 600.0, backend: str = "gloo",
                 max_attempts: int = 3, probe_s: float = 30.0, asynchronous: bool = False, pack_mb: float = 64,
                 delta_full_every: int = 0, adapter: dict | None = None):
        self.engines, self.learners, self.meta = engines, learners, meta
        self.adapter = adapter  # LoRA adapter sync: the PEFT config the engines write beside each update
        self.pack_bytes = int(pack_mb * 2**20)  # weight-sync pack size (0: one broadcast per tensor)
        self.delta_full_every = delta_full_every  # > 0: delta sync, in full every that many updates
        self.sync_bytes = 0  # bytes the last update put on the wire
        self.timeout_s, self.backend, self.max_attempts, self.probe_s = timeout_s, backend, max_attempts, probe_s
        # asynchronous: the learner may be mid-update while the engines generate, so a replaced
        # engine gets the weights of the last sync (kept by learner rank 0), not the learner's current ones
        self.asynchronous = asynchronous
        self.version = 0  # updates the engines' weights have seen
        self.refused: list[Refused] = []  # prompts the last generate call's engines refused

    @property
    def restarts(self) -> int:
        """Engines replaced so far in this run."""
        return self.engines.replacements

    # ------------------------------------------------------------------ weights
    def connect(self) -> None:
        """(Re)build the weight group: learner rank 0 plus every worker of every engine."""
        if self.learners is None:
            return
        from weights.net import free_port
        # every wait bounded: by the groups' start-up timeouts (cluster.startup_timeout_s)
        self.engines.get(self.engines.call("ready"), "start-up", startup=True)
        workers = self.engines.get(self.engines.call("num_workers"), "num_workers", startup=True)
        host = self.learners.get(self.learners.actors[0].address.remote(), "its address", startup=True)[0]
        port, world = free_port(host), 1 + sum(workers)
        offsets = [1 + sum(workers[:i]) for i in range(len(workers))]
        delta = self.delta_full_every > 0  # (a new group starts both sides over: the next update is full)
        learner = self.learners.actors[0].init_weight_group.remote(host, port, world, self.pack_bytes,
                                                                   self.delta_full_every)
        joins = self.engines.call_each("init_weight_group", [(host, port, o, world, self.backend, self.pack_bytes,
                                                              delta, self.adapter) for o in offsets])
        self.learners.get(learner, "the weight group's set-up", startup=True)
        self.engines.get(joins, "the weight group's set-up", startup=True)

    def attach(self, learners, meta, adapter: dict | None = None) -> None:
        """Serve a new learner group (a learner rank ended the last attempt and every rank was
        started afresh): an engine that does not answer a probe within ``probe_s`` (stuck in a
        receive from the rank that died) is replaced, then the weight group is rebuilt around the
        new rank 0. The engines keep their weights until the next sync (the resumed checkpoint's)."""
        dead = self._unresponsive()
        if dead:
            self._replace(dead, "did not answer after the learner ranks were restarted")
        self.learners, self.meta, self.adapter = learners, meta, adapter
        self.connect()

    def sync(self, version: int | None = None) -> None:
        """Push the learner's current weights (``version`` updates old) to every engine; an engine
        lost on the way is replaced (and gets the weights then)."""
        if self.learners is None:
            return
        for attempt in range(1, self.max_attempts + 1):
            try:
                sent = ray.get(self.learners.call("broadcast_weights", keep=self.asynchronous)
                               + self.engines.call("receive_weights", self.meta), timeout=self.timeout_s)
                self.sync_bytes = sent[0]
                self.version = self.version if version is None else version
                return
            except (ray.exceptions.RayError, TimeoutError) as e:  # GetTimeoutError is a TimeoutError
                if attempt == self.max_attempts:
                    raise RuntimeError(f"weight broadcast failed {attempt} times; last error: {e}") from e
                self._replace(self._unresponsive(), f"lost during the weight broadcast ({type(e).__name__})")
                self.connect()

    # ------------------------------------------------------------------ generation
    def generate(self, items: list, *args, on_shard=None, more=None) -> list:
        """``engine.generate(shard, *args)`` on every engine; the rollouts in ``items`` order, then
        the items ``more`` added. ``on_shard(rollouts)`` sees each shard as it lands; ``more(rollouts,
        engine)`` (streaming) may then return new items, which that engine generates at once while
        the others are still busy (their rollouts follow ``items``', in the order they were added)."""
        jobs = list(enumerate(shard(items, self.engines.n)))  # (engine, items), in output order
        self.refused = []
        results: list = [None] * len(jobs)
        pending = {self._submit(e, part, args): (j, 1, time.monotonic()) for j, (e, part) in enumerate(jobs)}
        failed: list[tuple[int, int]] = []
        while pending or failed:
            if not pending:  # everything that could land has landed: recover the rest, then resubmit
                for j, attempt in failed:
                    if attempt >= self.max_attempts:
                        raise RuntimeError(f"rollout shard of engine {jobs[j][0]} failed {attempt} times; the engine "
                                           "logs say why")
                self._replace(sorted({jobs[j][0] for j, _ in failed}), "died or hung mid-generation")
                self.connect()
                self._push_synced()
                pending = {self._submit(*jobs[j], args): (j, a + 1, time.monotonic()) for j, a in failed}
                failed = []
                continue
            deadline = min(t for _, _, t in pending.values()) + self.timeout_s
            done, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.05, deadline - time.monotonic()))
            if not done:  # the oldest call has run past the timeout: a hung engine is a dead one
                now = time.monotonic()
                for ref in [r for r, (_, _, t) in pending.items() if now - t >= self.timeout_s]:
                    j, attempt, _ = pending.pop(ref)
                    print(f"rollout engine {jobs[j][0]} gave nothing for {self.timeout_s:.0f}s (rollout.timeout_s)",
                          flush=True)
                    failed.append((j, attempt))
                continue
            j, attempt, _ = pending.pop(done[0])
            try:
                landed = ray.get(done[0])
            except ray.exceptions.RayActorError:
                failed.append((j, attempt))
                continue
            results[j] = [r for r in landed if not isinstance(r, Refused)]
            self.refused += [r for r in landed if isinstance(r, Refused)]
            if on_shard is not None:
                on_shard(results[j])
            extra = more(results[j], jobs[j][0]) if more is not None else None
            if extra:  # streaming: the engine that just finished generates the new items now
                jobs.append((jobs[j][0], list(extra)))
                results.append(None)
                pending[self._submit(*jobs[-1], args)] = (len(jobs) - 1, 1, time.monotonic())
        return [r for part in results for r in part]

    def _push_synced(self) -> None:
        """Give every engine (a replaced one included) the weights of the last sync, so that a
        regenerated shard is drawn from the same policy as the rest of its batch."""
        if not self.asynchronous:
            self.sync()  # the learner is idle between syncs: its current weights are the synced ones
        elif self.learners is not None and self.version > 0:  # (version 0: replacements load it themselves)
            # queued behind the learner's running update; rank 0 resends the copy it kept at the last sync
            ray.get([self.learners.actors[0].resend_weights.remote()] + self.engines.call("receive_weights", self.meta),
                    timeout=self.timeout_s)

    def _submit(self, i: int, part: list, args: tuple):
        return self.engines.actors[i].generate.remote(part, *args)

    # ------------------------------------------------------------------ recovery
    def _unresponsive(self) -> list[int]:
        """Engines that do not answer a liveness probe within ``probe_s`` (dead or stuck)."""
        probes = {self.engines.actors[i].ready.remote(): i for i in range(self.engines.n)}
        done, _ = ray.wait(list(probes), num_returns=len(probes), timeout=self.probe_s)
        alive = set()
        for ref in done:
            try:
                ray.get(ref)
                alive.add(probes[ref])
            except ray.exceptions.RayError:
                pass
        return [i for i in range(self.engines.n) if i not in alive]

    def _replace(self, dead: list[int], why: str) -> None:
        """Start a fresh engine in place of each of ``dead`` (the caller reconnects and syncs)."""
        for i in dead:
            print(f"rollout engine {i} {why}: replacing it", flush=True)
            self.engines.replace(i)
