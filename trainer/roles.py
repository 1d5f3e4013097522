"""Build the actor roles of a run on Ray: rollout engines, learner ranks, reward workers.

    env = cluster.start(cfg, out_dir); cfg, why = conf.resolve_auto(cfg, cluster.has_gpu())
    engines = create_engines(cfg, model_path, env)                # mode=eval
    pool, learners, scorers = create_roles(cfg, model_path, env)  # mode=train: weight group connected

Each role is an ``ActorGroup`` on its own placement group, with the resources of its config
section and ``env`` (from ``trainer.cluster.start``). ``cfg`` is resolved (``conf.resolve_auto``):
no cluster-level ``auto`` is left for a role to guess.
"""
from __future__ import annotations

import os
import pathlib
import time

import ray

import conf

from actors.engine_pool import EnginePool
from actors.group import ActorGroup
from actors.reward_worker import RewardWorker
from actors.rollout import RolloutEngine
from conf import plain
from conf.hardware import auto_threads
from learner.learner import Learner
from trainer import cluster
from trainer.cluster import has_gpu


def threads_env(configured, asynchronous: bool = True, reserved: float = 1, cores: int | None = None,
                role: str = "rollout") -> dict[str, str]:
    """``OMP_NUM_THREADS`` of a role (``conf.hardware.auto_threads``): ``configured`` if set; else,
    on a private local cluster (``cores`` known), every core when the loop is synchronous (the
    roles take turns); when it is asynchronous, the engine's reserved CPUs and every core for the
    learner. On a cluster that was joined, Ray's own default (the reserved CPUs).

    >>> threads_env(3), threads_env(None, asynchronous=False, cores=2), threads_env(None, asynchronous=True, cores=2)
    ({'OMP_NUM_THREADS': '3'}, {'OMP_NUM_THREADS': '2'}, {'OMP_NUM_THREADS': '1'})
    >>> threads_env(None, asynchronous=True, cores=2, role="learner"), threads_env(None, cores=None)
    ({'OMP_NUM_THREADS': '2'}, {})
    """
    if not configured and cores is None:
        return {}
    return {"OMP_NUM_THREADS": str(auto_threads(configured, asynchronous, reserved, cores, role))}


def role_threads(cfg, section, role: str) -> dict[str, str]:
    """``threads_env`` of a role's actors (``section``: ``cfg.rollout`` or ``cfg.learner``)."""
    cores = None if cfg.cluster.address else (cfg.cluster.num_cpus or os.cpu_count())
    peers = section.get("num_engines", section.get("world_size", 1))  # actors of this role sharing the machine
    cores = None if cores is None else max(1, cores // peers)
    reserved = section.get("cpus_per_engine", section.get("cpus_per_rank", 1))
    overlapping = cfg.mode == "train" and cfg.trainer.max_staleness > 0  # sft/eval run one role at a time
    return threads_env(section.cpu_threads, overlapping, reserved, cores, role)


def _resolved(cfg) -> None:
    left = [k for k, v in (("trainer.max_staleness", cfg.trainer.max_staleness), ("learner.lora.sync", cfg.learner.lora.sync),
                           ("rollout.sync_pack_mb", cfg.rollout.sync_pack_mb)) if v == "auto"]
    if left:
        raise ValueError(f"{', '.join(left)} still auto: build the roles from conf.resolve_auto(cfg, gpu)")


def adapter_rank(cfg) -> int:
    """The LoRA rank the engines serve adapters of (``learner.lora.sync: adapter``), else 0."""
    lora = cfg.learner.lora
    return lora.r if lora.r > 0 and lora.sync == "adapter" else 0


def engine_kwargs(cfg, model_path: str) -> dict:
    """A rollout engine's constructor arguments, but its index."""
    return dict(model_path=model_path, cfg=plain(cfg.rollout), seed=cfg.seed, model_cfg=plain(cfg.model),
                lora_rank=adapter_rank(cfg))


def engine_placement(cfg, env: dict[str, str], gpu: bool) -> tuple[int, dict, dict[str, str]]:
    """(engines, each one's Ray resources, each one's environment): what an engine process carries
    from its start (a ``trainer.session.Session`` keeps one for a run with the same)."""
    r = cfg.rollout
    return (r.num_engines, {"CPU": r.cpus_per_engine, "GPU": r.devices_per_engine if gpu else 0, **r.resources},
            {**env, **role_threads(cfg, r, "rollout")})


def learner_placement(cfg, env: dict[str, str], gpu: bool) -> tuple[int, dict, dict[str, str]]:
    """(ranks, each one's Ray resources, each one's environment), as ``engine_placement``."""
    lc = cfg.learner
    return (lc.world_size, {"CPU": lc.cpus_per_rank, "GPU": lc.gpus_per_rank if gpu else 0, **lc.resources},
            {**env, **role_threads(cfg, lc, "learner")})


def create_engines(cfg, model_path: str, env: dict[str, str], gpu: bool | None = None) -> ActorGroup:
    """The rollout engines (serving the base plus a synced LoRA adapter with adapter sync)."""
    n, bundle, actor_env = engine_placement(cfg, env, has_gpu() if gpu is None else gpu)
    return ActorGroup(RolloutEngine, n, bundle, "rollout", kwargs=engine_kwargs(cfg, model_path),
                      kwargs_fn=lambda i: {"index": i}, env=actor_env,
                      call_timeout_s=cfg.rollout.timeout_s, startup_timeout_s=cfg.cluster.startup_timeout_s)


def items_per_rank(cfg) -> int:
    """The completions a learner rank trains on per GRPO step."""
    return cfg.trainer.prompts_per_step * cfg.rollout.num_generations // cfg.learner.world_size


def learner_kwargs(cfg, model_path: str, per_rank_items: int) -> dict:
    """A learner rank's constructor arguments, but its rank."""
    return dict(world_size=cfg.learner.world_size, model_path=model_path, model_cfg=plain(cfg.model),
                cfg=plain(cfg.learner), rollout_cfg=plain(cfg.rollout), seed=cfg.seed,
                total_steps=cfg.trainer.max_steps, per_rank_items=per_rank_items)


def create_learners(cfg, model_path: str, per_rank_items: int, env: dict[str, str], gpu: bool | None = None,
                    group: ActorGroup | None = None) -> ActorGroup:
    """The learner ranks, with DeepSpeed set up (rank 0 chooses the rendezvous address); ``group``:
    ranks already up, constructed with ``learner_kwargs`` (kept by a ``trainer.session.Session``)."""
    learners = group
    if learners is None:
        n, bundle, actor_env = learner_placement(cfg, env, has_gpu() if gpu is None else gpu)
        learners = ActorGroup(Learner, n, bundle, "learner", kwargs=learner_kwargs(cfg, model_path, per_rank_items),
                              kwargs_fn=lambda i: {"rank": i}, env=actor_env, call_timeout_s=cfg.learner.timeout_s,
                              startup_timeout_s=cfg.cluster.startup_timeout_s)
    host, port = learners.get(learners.actors[0].address.remote(), "its address", startup=True)
    # rank 0's answer: sizes, dtype and why, threads
    learners.info = learners.get(learners.call("setup", host, port), "setup", startup=True)[0]
    return learners


def create_roles(cfg, model_path: str, env: dict[str, str], survivors=None, engines: ActorGroup | None = None,
                 learners: ActorGroup | None = None) -> tuple[EnginePool, ActorGroup, ActorGroup]:
    """Rollout engines (as an ``EnginePool``), learner ranks and reward workers, with the
    weight-broadcast group between learner rank 0 and every engine worker connected. ``survivors``:
    the (pool, learners, scorers) of an attempt a learner rank ended (``trainer.max_restarts``);
    only the learner ranks start afresh, the engines (but any that does not answer a probe) and the
    reward workers go on serving: a large model's engine takes minutes to load. ``engines``, ``learners``:
    groups already up, constructed for ``model_path`` and ``cfg`` (kept from an earlier run of a
    ``trainer.session.Session``); the rest is built and joined to them."""
    _resolved(cfg)
    r, lc, rc = cfg.rollout, cfg.learner, cfg.reward
    gpu = has_gpu()
    per_rank = items_per_rank(cfg)
    t0 = time.perf_counter()
    if survivors is not None:
        pool, _, scorers = survivors
        print(f"starting {lc.world_size} DeepSpeed learner rank(s) afresh; the engines and reward workers go on", flush=True)
        learners = create_learners(cfg, model_path, per_rank, env, gpu)
        pool.attach(learners, _weight_meta(learners, pool.engines.info["dtype"]), _adapter(learners))
        print(f"learner ranks up in {time.perf_counter() - t0:.1f} s; weight group connected", flush=True)
        return pool, learners, scorers
    print(f"starting the roles: {r.num_engines} vLLM engine(s), {lc.world_size} DeepSpeed learner rank(s) "
          f"(ZeRO-{lc.zero_stage}), {rc.num_workers} reward worker(s) ...", flush=True)
    engines = create_engines(cfg, model_path, env, gpu) if engines is None else engines
    learners = create_learners(cfg, model_path, per_rank, env, gpu, group=learners)
    scorers = ActorGroup(RewardWorker, rc.num_workers, {"CPU": rc.cpus_per_worker, **rc.resources}, "reward",
                         args=(dict(rc.funcs), rc.box_convention, plain(rc.params), rc.timeout_s / 2), env=env)
    engines.info = engines.get(engines.actors[0].info.remote(), "start-up", startup=True)  # dtype and why, threads
    pool = EnginePool(engines, learners, _weight_meta(learners, engines.info["dtype"]), r.timeout_s,
                      "nccl" if gpu else "gloo", asynchronous=cfg.trainer.max_staleness > 0,
                      pack_mb=float(r.sync_pack_mb), delta_full_every=r.sync_full_every if r.sync_delta else 0,
                      adapter=_adapter(learners))
    pool.connect()
    print(f"roles up in {time.perf_counter() - t0:.1f} s (an engine's own start-up: {engines.info['start_s']:.1f} s); "
          "weight group connected", flush=True)
    return pool, learners, scorers


def _weight_meta(learners: ActorGroup, dtype: str) -> list:
    """(name, dtype, shape) of every tensor a sync sends, as the engines hold them (``dtype``)."""
    return learners.get(learners.actors[0].weight_meta.remote(dtype), "weight_meta", startup=True)


def _adapter(learners: ActorGroup) -> dict | None:
    """The PEFT config of the adapter a LoRA adapter sync sends (None: whole weights are sent)."""
    return learners.get(learners.actors[0].adapter_config.remote(), "adapter_config", startup=True)


def describe_engine(info: dict) -> str:
    """An engine's ``info()`` as one line: its precision, threads, compilation and KV-cache block, each with why."""
    return (f"{info['dtype']} ({info['dtype_reason']}), {info['threads']} threads, "
            f"{'compiled' if info['compiled'] else 'eager'} ({info['compiled_reason']}), "
            f"KV block {info['block_size'] or 'vLLM default'} ({info['block_reason']})")


def describe_choices(cfg, engine: dict, learner: dict, why: dict[str, str]) -> dict:
    """What ``auto`` resolved to, for the run and on each role's machine: printed once and kept in
    summary.json. ``why``: the reasons ``conf.resolve_auto`` gave."""
    K = cfg.trainer.max_staleness
    chosen = {"loop": (f"asynchronous, max_staleness={K}" if K else "synchronous") + f" ({why['loop']})",
              "rollout": describe_engine(engine),
              "learner": f"{learner['dtype']} ({learner['dtype_reason']}), {learner['threads']} threads, "
                         f"off_policy={cfg.learner.off_policy}, prefix_sharing={cfg.learner.prefix_sharing}, "
                         f"linear {learner['linear']} ({learner['linear_reason']})"}
    if cfg.learner.lora.r > 0:
        chosen["lora"] = f"r={cfg.learner.lora.r}, sync={cfg.learner.lora.sync} ({why['lora']})"
    print("; ".join(f"{k}: {v}" for k, v in chosen.items()), flush=True)
    return chosen


def launch(cfg, model_path: str, out_dir, session=None) -> tuple:
    """Start Ray, resolve the cluster-level ``auto`` settings and build every role, in one call:
    for tests and benchmarks that drive the roles themselves (the driver takes these steps one by
    one). A Ray already up in this process (a test module's, shared by its launches) is used as it
    is: only the roles are built. ``session``: a ``trainer.session.Session`` that starts Ray and
    gives its kept engine and learner rank (the caller ends the run with ``session.end_run``).
    Returns (resolved cfg, engine pool, learners, scorers)."""
    if session is not None:
        env = session.start(cfg, pathlib.Path(out_dir))
    else:
        env = cluster.actor_env(cfg) if ray.is_initialized() else cluster.start(cfg, pathlib.Path(out_dir))
    cfg, _ = conf.resolve_auto(cfg, has_gpu())
    kept = session.groups(cfg, model_path, env) if session is not None else {}
    return (cfg, *create_roles(cfg, model_path, env, **kept))
