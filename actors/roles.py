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


def threads_env(configured) -> dict[str, str]:
    """``OMP_NUM_THREADS`` for a role whose ``cpu_threads`` is set; otherwise Ray's own default
    (the actor's reserved CPUs). Measured on 2 cores: giving the learner and the engine 2 threads
    each made end-to-end training 1.4x slower than 1 each (their idle OpenMP threads compete).

    >>> threads_env(3), threads_env(None)
    ({'OMP_NUM_THREADS': '3'}, {})
    """
    return {"OMP_NUM_THREADS": str(int(configured))} if configured else {}


def create_engines(cfg, model_path: str, gpu: bool | None = None):
    from actors.group import ActorGroup
    from actors.rollout import RolloutEngine
    r = cfg.rollout
    gpu = has_gpu() if gpu is None else gpu
    bundle = {"CPU": r.cpus_per_engine, "GPU": r.devices_per_engine if gpu else 0, **r.resources}
    return ActorGroup(RolloutEngine, r.num_engines, bundle, "rollout", args=(model_path, plain(r), cfg.seed),
                      kwargs={"model_cfg": plain(cfg.model)}, kwargs_fn=lambda i: {"index": i},
                      env={**ACTOR_ENV, **threads_env(r.cpu_threads)})


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
                          kwargs_fn=lambda i: {"rank": i}, env={**ACTOR_ENV, **threads_env(lc.cpu_threads)})
    host, port = ray.get(learners.actors[0].address.remote())
    ray.get(learners.call("setup", host, port))
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
    engines = create_engines(cfg, model_path, gpu)
    learners = create_learners(cfg, model_path, cfg.trainer.prompts_per_step * r.num_generations // lc.world_size, gpu)
    scorers = ActorGroup(RewardWorker, rc.num_workers, {"CPU": rc.cpus_per_worker, **rc.resources}, "reward",
                         args=(dict(rc.funcs), rc.box_convention), env=ACTOR_ENV)
    meta = ray.get(learners.actors[0].weight_meta.remote())
    pool = EnginePool(engines, learners, meta, r.timeout_s, "nccl" if gpu else "gloo")
    pool.connect()
    return pool, learners, scorers
