"""The training loop, top to bottom: GRPO on Ray with vLLM rollouts and a DeepSpeed learner.

    python orchestrator.py conf=ovd                      # the embedded default, on CPU
    python orchestrator.py conf=rec learner.lr=1e-6 trainer.max_steps=100

One step: sample B prompts -> rollout engines generate G completions each -> reward workers
score them -> group-relative advantages -> learner ranks update the policy -> the learner
broadcasts the new weights to the engines -> log. Config: ``conf/base.yaml`` documents every key.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> dict:
    import conf
    from data.tiny_model import cache_root, resolve_model_path

    cfg = conf.resolve(conf.load(sys.argv[1:] if argv is None else argv), cache_root())
    out_dir = pathlib.Path(cfg.trainer.output_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    check_sizes(cfg)
    model_path = resolve_model_path(cfg.model.path, cfg.seed)
    train, val, report = load_data(cfg)
    print(report.summary(), flush=True)
    if cfg.mode == "eval":
        raise SystemExit("mode=eval is not available yet; use mode=train")

    import ray
    start_ray(cfg, out_dir)
    try:
        return train_loop(cfg, model_path, train, out_dir)
    finally:
        ray.shutdown()


def train_loop(cfg, model_path: str, train: list, out_dir: pathlib.Path) -> dict:
    import ray
    import torch
    from tqdm import tqdm

    from data.sampler import PromptSampler
    from learner.batch import item_from_rollout
    from learner.grpo import group_advantages

    G, B = cfg.rollout.num_generations, cfg.trainer.prompts_per_step
    engines, learners, scorers = create_roles(cfg, model_path)
    scorer_pool = ScorerPool(scorers, cfg.reward.chunk_size, cfg.reward.timeout_s)
    meta = ray.get(learners.actors[0].weight_meta.remote())
    sampler = PromptSampler(len(train), B, cfg.seed, cfg.data.shuffle, cfg.trainer.epochs)
    max_steps = min(cfg.trainer.max_steps, sampler.steps_available())
    times = {"rollout": 0.0, "reward": 0.0, "train": 0.0, "sync": 0.0}
    history, used = [], []
    metrics_file = open(out_dir / "metrics.jsonl", "a")
    bar = tqdm(range(max_steps), desc="grpo", dynamic_ncols=True)
    t_run = time.perf_counter()
    for step in bar:
        t_step = time.perf_counter()
        batch = [train[i] for i in sampler.next()]

        # 1. generate: prompts sharded over engines; scoring starts as each engine's shard lands
        t0 = time.perf_counter()
        gen_refs = engines.call_sharded("generate", batch)
        rollouts, score_refs = [], []
        pending = list(gen_refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=cfg.rollout.timeout_s)
            if not done:
                raise TimeoutError(f"rollout engines gave nothing for {cfg.rollout.timeout_s}s (rollout.timeout_s)")
            shard = ray.get(done[0])
            rollouts += shard
            scorer_pool.submit(shard)
        times["rollout"] += (t_gen := time.perf_counter() - t0)

        # 2. score: every completion exactly once
        t0 = time.perf_counter()
        scored, failures = scorer_pool.collect()
        times["reward"] += time.perf_counter() - t0
        rollouts.sort(key=lambda r: (batch.index(r.prompt), r.sample))
        assert len(rollouts) == B * G and len(scored) == B * G, "a completion was lost or duplicated"
        totals = torch.tensor([scored[r.key]["total"] for r in rollouts], dtype=torch.float64)

        # 3. advantages within each group of G, then the update on every learner rank
        adv = group_advantages(totals, G, cfg.learner.scale_rewards, cfg.learner.adv_eps)
        items = [item_from_rollout(r, float(a)) for r, a in zip(rollouts, adv)]
        t0 = time.perf_counter()
        train_metrics = ray.get(learners.call_sharded("train_step", items))[0]
        times["train"] += time.perf_counter() - t0

        # 4. push the new weights to every engine
        t0 = time.perf_counter()
        ray.get(learners.call("broadcast_weights") + engines.call("receive_weights", meta))
        times["sync"] += time.perf_counter() - t0

        # 5. log
        used += [r.key for r in rollouts]
        row = step_metrics(step + 1, rollouts, scored, failures, totals, train_metrics, t_gen, time.perf_counter() - t_step)
        history.append(row)
        metrics_file.write(json.dumps(row) + "\n")
        metrics_file.flush()
        bar.set_postfix(reward=f"{row['reward/mean']:.3f}", kl=f"{row['kl']:.4f}")
    metrics_file.close()
    summary = summarize(history, times, time.perf_counter() - t_run, used)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print_summary(summary, out_dir)
    return summary


# ---------------------------------------------------------------------------- setup
def check_sizes(cfg) -> None:
    """Fail before anything heavy when the batch cannot be split as configured."""
    n = cfg.trainer.prompts_per_step * cfg.rollout.num_generations
    if n % cfg.learner.world_size:
        raise SystemExit(f"trainer.prompts_per_step x rollout.num_generations = {n} completions per step must "
                         f"divide evenly over learner.world_size={cfg.learner.world_size}")
    if cfg.trainer.prompts_per_step < cfg.rollout.num_engines:
        raise SystemExit(f"trainer.prompts_per_step={cfg.trainer.prompts_per_step} is fewer than "
                         f"rollout.num_engines={cfg.rollout.num_engines}: some engines would idle")


def load_data(cfg):
    from data.loaders import SkipReport, load_prompts
    from data.prepare import ensure_synthetic
    d = cfg.data
    ensure_synthetic(d)
    report = SkipReport()
    kw = dict(task=d.task, accu_methods=d.accu_reward_method, strict=d.strict, max_image_pixels=d.max_image_pixels,
              report=report)
    train, _ = load_prompts(d.train_files, d.image_folders, **kw)
    val = load_prompts(d.val_files, d.image_folders, **kw)[0] if d.val_files else []
    if not train:
        raise SystemExit(f"no usable training rows in {d.train_files}:\n{report.summary()}")
    return train, val, report


def start_ray(cfg, out_dir: pathlib.Path) -> None:
    """Join ``cluster.address`` or start a private local Ray whose files stay in the run dir."""
    import ray
    from data.tiny_model import cache_root
    # The local cluster's dashboard binds to cluster.dashboard_host (127.0.0.1 by default), so
    # Ray's token auth is off for it; a shared cluster keeps whatever auth its owner set.
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "TORCH_EXTENSIONS_DIR": str(cache_root() / "torch_extensions"), "VLLM_CACHE_ROOT": str(cache_root() / "vllm"), "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0"),
           "TOKENIZERS_PARALLELISM": "false", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
           "VLLM_CPU_KVCACHE_SPACE": str(cfg.rollout.kv_cache_gb), "VLLM_CPU_OMP_THREADS_BIND": "nobind",
           "WANDB_MODE": cfg.wandb.mode, "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "ERROR")}
    c = cfg.cluster
    if c.address:
        ray.init(address=c.address, runtime_env={"env_vars": env}, log_to_driver=True)
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    need = (cfg.rollout.num_engines * cfg.rollout.cpus_per_engine + cfg.learner.world_size * cfg.learner.cpus_per_rank
            + cfg.reward.num_workers * cfg.reward.cpus_per_worker)
    num_cpus = c.num_cpus or max(os.cpu_count() or 1, math.ceil(need))
    tmp = out_dir / "ray"
    if len(str(tmp)) > 60:  # unix socket paths must stay short
        tmp = pathlib.Path("/tmp") / f"vr1-{abs(hash(str(out_dir))) % 10**8}"
    kw = dict(num_cpus=num_cpus, include_dashboard=c.include_dashboard, dashboard_host=c.dashboard_host,
              dashboard_port=c.dashboard_port, _temp_dir=str(tmp), runtime_env={"env_vars": env},
              log_to_driver=True, configure_logging=True, logging_level="WARNING")
    if c.metrics_port:
        kw["_metrics_export_port"] = c.metrics_port
    ray.init(**kw)


def create_roles(cfg, model_path: str):
    """Rollout engines, learner ranks (DeepSpeed set up, rank 0 first) and reward workers,
    then the weight-broadcast group between learner rank 0 and every engine worker."""
    import ray
    from omegaconf import OmegaConf

    from actors.group import ActorGroup
    from actors.reward_worker import RewardWorker
    from actors.rollout import RolloutEngine
    from learner.learner import Learner
    from learner.weight_sync import free_port
    plain = lambda node: OmegaConf.to_container(node, resolve=True)  # noqa: E731
    r, lc, rc = cfg.rollout, cfg.learner, cfg.reward
    gpu = _has_gpu()
    engines = ActorGroup(RolloutEngine, r.num_engines, {"CPU": r.cpus_per_engine, "GPU": r.devices_per_engine if gpu else 0},
                         "rollout", args=(model_path, plain(r), cfg.seed), kwargs={"model_cfg": plain(cfg.model)},
                         kwargs_fn=lambda i: {"index": i})
    per_rank = cfg.trainer.prompts_per_step * r.num_generations // lc.world_size
    learners = ActorGroup(Learner, lc.world_size, {"CPU": lc.cpus_per_rank, "GPU": lc.gpus_per_rank if gpu else 0},
                          "learner", kwargs=dict(world_size=lc.world_size, model_path=model_path, model_cfg=plain(cfg.model),
                                                 cfg=plain(lc), rollout_cfg=plain(r), seed=cfg.seed,
                                                 total_steps=cfg.trainer.max_steps, per_rank_items=per_rank),
                          kwargs_fn=lambda i: {"rank": i})
    scorers = ActorGroup(RewardWorker, rc.num_workers, {"CPU": rc.cpus_per_worker}, "reward",
                         args=(dict(rc.funcs), rc.box_convention))
    host, port = ray.get(learners.actors[0].address.remote())
    ray.get(learners.call("setup", host, port) + engines.call("ready"))
    workers = ray.get(engines.call("num_workers"))
    world = 1 + sum(workers)
    wport = free_port(host)
    offsets = [1 + sum(workers[:i]) for i in range(len(workers))]
    backend = "nccl" if gpu else "gloo"
    ray.get([learners.actors[0].init_weight_group.remote(host, wport, world)]
            + engines.call_each("init_weight_group", [(host, wport, o, world, backend) for o in offsets]))
    return engines, learners, scorers


def _has_gpu() -> bool:
    import ray
    return ray.cluster_resources().get("GPU", 0) > 0


class ScorerPool:
    """Spreads completions over reward workers in chunks, round-robin; collects each exactly once."""

    def __init__(self, group, chunk: int, timeout_s: float):
        self.group, self.chunk, self.timeout_s = group, chunk, timeout_s
        self.refs, self.next = [], 0

    def submit(self, rollouts) -> None:
        from actors.reward_worker import tasks_from_rollouts
        tasks = tasks_from_rollouts(rollouts)
        for i in range(0, len(tasks), self.chunk):
            actor = self.group.actors[self.next % len(self.group.actors)]
            self.refs.append(actor.score.remote(tasks[i:i + self.chunk]))
            self.next += 1

    def collect(self) -> tuple[dict, dict]:
        """({key: {"total", "values"}}, {reward: parse-failure count}) for everything submitted."""
        import ray
        out, failures = {}, {}
        for res in ray.get(self.refs, timeout=self.timeout_s):
            for key, total, values in zip(res["keys"], res["totals"], res["values"]):
                if key in out:
                    raise RuntimeError(f"completion {key} was scored twice")
                out[key] = {"total": total, "values": values}
            for k, v in res["failures"].items():
                failures[k] = failures.get(k, 0) + v
        self.refs = []
        return out, failures


# ---------------------------------------------------------------------------- logging
def step_metrics(step, rollouts, scored, failures, totals, tm, t_gen, t_step) -> dict:
    names = sorted({n for r in rollouts for n in scored[r.key]["values"]})
    lengths = [len(r.completion_token_ids) for r in rollouts]
    row = {"step": step, "reward/mean": float(totals.mean()), "reward/std": float(totals.std()),
           **{f"reward/{n}": sum(scored[r.key]["values"].get(n, 0.0) for r in rollouts) / len(rollouts) for n in names},
           **{f"parse_failures/{k}": v for k, v in failures.items()},
           "completion_len/mean": sum(lengths) / len(lengths),
           "truncated_frac": sum(r.finish_reason == "length" for r in rollouts) / len(rollouts),
           "rollout/tokens_per_s": sum(lengths) / max(t_gen, 1e-9), "time/step_s": t_step}
    row.update({k: v for k, v in tm.items()})
    return row


def summarize(history: list[dict], times: dict, wall: float, used: list) -> dict:
    phases = sum(times.values())
    return {"steps": len(history), "samples": len(used), "distinct_samples": len(set(used)),
            "reward_first": history[0]["reward/mean"] if history else None,
            "reward_last": history[-1]["reward/mean"] if history else None,
            "time_s": {**{k: round(v, 2) for k, v in times.items()}, "other": round(wall - phases, 2), "total": round(wall, 2)}}


def print_summary(s: dict, out_dir: pathlib.Path) -> None:
    t = s["time_s"]
    share = lambda k: f"{t[k]:.1f}s ({100 * t[k] / max(t['total'], 1e-9):.0f}%)"  # noqa: E731
    print(f"\ndone: {s['steps']} steps, {s['samples']} samples; reward {s['reward_first']:.3f} -> {s['reward_last']:.3f}")
    print("time: " + ", ".join(f"{k} {share(k)}" for k in ("rollout", "reward", "train", "sync", "other")))
    print(f"metrics: {out_dir / 'metrics.jsonl'}  summary: {out_dir / 'summary.json'}")


if __name__ == "__main__":
    main()
