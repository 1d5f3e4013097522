"""Build the actor roles of a run on Ray: rollout engines, learner ranks, reward workers.

    engines = create_engines(cfg, model_path)                  # mode=eval
    pool, learners, scorers = create_roles(cfg, model_path)    # mode=train: weight group connected

Each role is an ``ActorGroup`` on its own placement group, with the resources of its config
section; every actor gets ``ACTOR_ENV`` (set by ``orchestrator.start_ray``).
"""
from __future__ import annotations

ACTOR_ENV: dict[str, str] = {}  # environment of every actor


def plain(node):
    """An OmegaConf node as plain Python containers (what actors receive)."""
    from omegaconf import OmegaConf
    return OmegaConf.to_container(node, resolve=True)


def has_gpu() -> bool:
    import ray
    return ray.cluster_resources().get("GPU", 0) > 0


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
    from conf.hardware import auto_threads
    if not configured and cores is None:
        return {}
    return {"OMP_NUM_THREADS": str(auto_threads(configured, asynchronous, reserved, cores, role))}


def _threads(cfg, section, role: str) -> dict[str, str]:
    import os
    cores = None if cfg.cluster.address else (cfg.cluster.num_cpus or os.cpu_count())
    peers = section.get("num_engines", section.get("world_size", 1))  # actors of this role sharing the machine
    cores = None if cores is None else max(1, cores // peers)
    reserved = section.get("cpus_per_engine", section.get("cpus_per_rank", 1))
    overlapping = cfg.mode == "train" and cfg.trainer.max_staleness > 0  # sft/eval run one role at a time
    return threads_env(section.cpu_threads, overlapping, reserved, cores, role)


def pack_mb(value, gpu: bool) -> float:
    """``rollout.sync_pack_mb``: auto is 64 MB packs with NCCL (GPUs) and one broadcast per tensor
    with gloo, where packing measured slower (bench.broadcast: 0.71x at 457 MB to one engine)."""
    return float(value) if value != "auto" else (64.0 if gpu else 0.0)


def resolve_loop(cfg, gpu: bool | None = None) -> str:
    """Set ``trainer.max_staleness`` from ``auto`` to a number (a number stays as it is) before
    the roles are sized for it; returns why."""
    from conf.hardware import resolve_staleness
    gpu = has_gpu() if gpu is None else gpu
    K, why = resolve_staleness(cfg.trainer.max_staleness, gpu, bool(cfg.cluster.address), cfg.learner.off_policy)
    cfg.trainer.max_staleness = K
    return why


def resolve_lora(cfg, gpu: bool) -> str:
    """Set ``learner.lora.sync`` from ``auto`` to adapter or merged (before the engines and the
    learners are made, so both see the same choice); returns why."""
    from conf.hardware import resolve_lora_sync
    cfg.learner.lora.sync, why = resolve_lora_sync(cfg.learner.lora.sync, gpu)
    return why


def adapter_rank(cfg) -> int:
    """The LoRA rank the engines serve adapters of (``learner.lora.sync: adapter``), else 0."""
    lora = cfg.learner.lora
    return lora.r if lora.r > 0 and lora.sync == "adapter" else 0


def create_engines(cfg, model_path: str, gpu: bool | None = None, lora_rank: int = 0):
    """The rollout engines (``lora_rank`` > 0: serving the base plus a synced LoRA adapter)."""
    from actors.group import ActorGroup
    from actors.rollout import RolloutEngine
    r = cfg.rollout
    gpu = has_gpu() if gpu is None else gpu
    bundle = {"CPU": r.cpus_per_engine, "GPU": r.devices_per_engine if gpu else 0, **r.resources}
    return ActorGroup(RolloutEngine, r.num_engines, bundle, "rollout", args=(model_path, plain(r), cfg.seed),
                      kwargs={"model_cfg": plain(cfg.model), "lora_rank": lora_rank}, kwargs_fn=lambda i: {"index": i},
                      env={**ACTOR_ENV, **_threads(cfg, r, "rollout")})


def create_learners(cfg, model_path: str, per_rank_items: int, gpu: bool | None = None):
    """The learner ranks, with DeepSpeed set up (rank 0 chooses the rendezvous address)."""
    import ray
    from actors.group import ActorGroup
    from learner.learner import Learner
    lc = cfg.learner
    gpu = has_gpu() if gpu is None else gpu
    bundle = {"CPU": lc.cpus_per_rank, "GPU": lc.gpus_per_rank if gpu else 0, **lc.resources}
    learners = ActorGroup(Learner, lc.world_size, bundle, "learner",
                          kwargs=dict(world_size=lc.world_size, model_path=model_path, model_cfg=plain(cfg.model),
                                      cfg=plain(lc), rollout_cfg=plain(cfg.rollout), seed=cfg.seed,
                                      total_steps=cfg.trainer.max_steps, per_rank_items=per_rank_items),
                          kwargs_fn=lambda i: {"rank": i}, env={**ACTOR_ENV, **_threads(cfg, lc, "learner")})
    host, port = ray.get(learners.actors[0].address.remote())
    learners.info = ray.get(learners.call("setup", host, port))[0]  # rank 0's: sizes, dtype chosen and why, threads
    return learners


def create_roles(cfg, model_path: str):
    """Rollout engines (as an ``EnginePool``), learner ranks and reward workers, with the
    weight-broadcast group between learner rank 0 and every engine worker connected."""
    import ray
    from actors.engine_pool import EnginePool
    from actors.group import ActorGroup
    from actors.reward_worker import RewardWorker
    r, lc, rc = cfg.rollout, cfg.learner, cfg.reward
    gpu = has_gpu()
    resolve_loop(cfg, gpu)  # max_staleness auto -> a number: the threads and the pool are sized for it
    lora_why = resolve_lora(cfg, gpu)
    engines = create_engines(cfg, model_path, gpu, adapter_rank(cfg))
    learners = create_learners(cfg, model_path, cfg.trainer.prompts_per_step * r.num_generations // lc.world_size, gpu)
    if lc.lora.r > 0:
        learners.info["lora"] = f"r={lc.lora.r}, sync={lc.lora.sync} ({lora_why})"
    scorers = ActorGroup(RewardWorker, rc.num_workers, {"CPU": rc.cpus_per_worker, **rc.resources}, "reward",
                         args=(dict(rc.funcs), rc.box_convention, plain(rc.params)), env=ACTOR_ENV)
    engines.info = ray.get(engines.actors[0].info.remote())  # dtype chosen and why, threads
    meta = ray.get(learners.actors[0].weight_meta.remote(engines.info["dtype"]))
    pool = EnginePool(engines, learners, meta, r.timeout_s, "nccl" if gpu else "gloo",
                      asynchronous=cfg.trainer.max_staleness > 0, pack_mb=pack_mb(r.sync_pack_mb, gpu),
                      delta_full_every=r.sync_full_every if r.sync_delta else 0,
                      adapter=ray.get(learners.actors[0].adapter_config.remote()))
    pool.connect()
    return pool, learners, scorers
