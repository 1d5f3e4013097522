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
ACTOR_ENV: dict[str, str] = {}  # environment of every actor, set by start_ray


def main(argv: list[str] | None = None) -> dict:
    # torch first: loaded after Ray and the image libraries, libtorch's bundled oneMKL can fail to
    # dlopen itself in a Ray Jobs driver ("Intel oneMKL FATAL ERROR: Cannot load libtorch_cpu.so")
    import torch  # noqa: F401

    import conf
    from data.tiny_model import cache_root, resolve_model_path

    cfg = conf.resolve(conf.load(sys.argv[1:] if argv is None else argv), cache_root())
    out_dir = pathlib.Path(cfg.trainer.output_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    check_sizes(cfg)
    model_path = resolve_model_path(cfg.model.path, cfg.seed)
    train, val, report = load_data(cfg)
    print(report.summary(), flush=True)

    import ray
    _import_driver_modules()
    start_ray(cfg, out_dir)
    try:
        if cfg.mode == "eval":
            return eval_only(cfg, model_path, val, out_dir)
        if cfg.mode == "sft":
            return sft_loop(cfg, model_path, train, out_dir)
        return train_loop(cfg, model_path, train, val, out_dir)
    finally:
        ray.shutdown()


def train_loop(cfg, model_path: str, train: list, val: list, out_dir: pathlib.Path) -> dict:
    import ray
    import torch
    from tqdm import tqdm

    from data.sampler import PromptSampler
    from learner.batch import item_from_rollout
    from learner.grpo import group_advantages
    from trainer import evaluate
    from trainer.monitor import Monitor
    from trainer.summary import print_summary, step_metrics, summarize

    G, B = cfg.rollout.num_generations, cfg.trainer.prompts_per_step
    engines, learners, scorers = create_roles(cfg, model_path)
    from actors.reward_worker import ScorerPool
    scorer_pool = ScorerPool(scorers, cfg.reward.chunk_size, cfg.reward.timeout_s)
    meta = ray.get(learners.actors[0].weight_meta.remote())
    sampler = PromptSampler(len(train), B, cfg.seed, cfg.data.shuffle, cfg.trainer.epochs)
    max_steps = min(cfg.trainer.max_steps, sampler.steps_available())
    start, history = resume_if_asked(cfg, out_dir, learners, engines, sampler, meta)
    monitor = Monitor(out_dir, cfg.wandb, _plain(cfg))
    eval_set = evaluate.subset(val, cfg.eval.train_samples, cfg.eval.subset_seed)
    if cfg.trainer.eval_steps and start == 0 and eval_set:
        run_periodic_eval(engines, eval_set, cfg, 0, out_dir, monitor)
    times = {"rollout": 0.0, "reward": 0.0, "train": 0.0, "sync": 0.0, "eval_ckpt": 0.0}
    bar = tqdm(range(start, max_steps), desc="grpo", dynamic_ncols=True, initial=start, total=max_steps)
    bad_steps = 0
    t_run = time.perf_counter()
    for step in bar:
        t_step = time.perf_counter()
        phase = {}
        batch = [train[i] for i in sampler.next()]
        seeds = [sample_seed(cfg.seed, step, p.id) for p in batch]

        # 1. generate: prompts sharded over engines; scoring starts as each engine's shard lands
        t0 = time.perf_counter()
        rollouts = []
        pending = engines.call_sharded("generate", list(zip(batch, seeds)))
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=cfg.rollout.timeout_s)
            if not done:
                raise TimeoutError(f"rollout engines gave nothing for {cfg.rollout.timeout_s}s (rollout.timeout_s)")
            shard = ray.get(done[0])
            rollouts += shard
            scorer_pool.submit(shard)
        phase["rollout"], phase["queue_depth"] = time.perf_counter() - t0, len(scorer_pool.pending)
        times["rollout"] += phase["rollout"]

        # 2. score: every completion exactly once
        t0 = time.perf_counter()
        scored, failures = scorer_pool.collect()
        phase["reward"] = time.perf_counter() - t0
        times["reward"] += phase["reward"]
        position = {p.id: i for i, p in enumerate(batch)}  # groups of G, in batch order
        rollouts.sort(key=lambda r: (position[r.prompt.id], r.sample))
        assert len(rollouts) == B * G == len(scored), "a completion was lost or duplicated"
        phase["reward_recoveries"] = scorer_pool.recovered
        totals = torch.tensor([scored[r.key]["total"] for r in rollouts], dtype=torch.float64)

        # 3. advantages within each group of G, then the update on every learner rank
        adv = group_advantages(totals, G, cfg.learner.scale_rewards, cfg.learner.adv_eps)
        items = [item_from_rollout(r, float(a)) for r, a in zip(rollouts, adv)]
        t0 = time.perf_counter()
        train_metrics = ray.get(learners.call_sharded("train_step", items))[0]
        bad_steps = bad_steps + 1 if train_metrics["skipped_updates"] == cfg.learner.num_iterations else 0
        if bad_steps >= cfg.trainer.max_bad_steps:
            raise SystemExit(f"{bad_steps} steps in a row had a non-finite loss or gradient and were skipped "
                             f"(trainer.max_bad_steps={cfg.trainer.max_bad_steps}); last good checkpoint: "
                             f"{out_dir / 'checkpoints'}. Lower learner.lr or check the rewards/data of these steps.")
        phase["train"] = time.perf_counter() - t0
        times["train"] += phase["train"]

        # 4. push the new weights to every engine
        t0 = time.perf_counter()
        ray.get(learners.call("broadcast_weights") + engines.call("receive_weights", meta))
        phase["sync"] = time.perf_counter() - t0
        times["sync"] += phase["sync"]

        # 5. log, then evaluate / checkpoint when due
        phase["step"] = time.perf_counter() - t_step
        row = step_metrics(step + 1, batch, rollouts, scored, failures, totals, train_metrics, phase)
        history.append(row)
        for warning in monitor.log(row):
            tqdm.write(f"WARNING: {warning}")
        bar.set_postfix(reward=f"{row['reward/mean']:.3f}", kl=f"{row['kl']:.4f}")
        t0 = time.perf_counter()
        done_now = step + 1 == max_steps or step + 1 == cfg.trainer.stop_after_steps
        if cfg.trainer.eval_steps and eval_set and ((step + 1) % cfg.trainer.eval_steps == 0 or done_now):
            run_periodic_eval(engines, eval_set, cfg, step + 1, out_dir, monitor)
        if done_now or (cfg.trainer.save_steps and (step + 1) % cfg.trainer.save_steps == 0):
            save_checkpoint(out_dir, step + 1, learners, sampler, history, cfg.trainer.keep_checkpoints)
        times["eval_ckpt"] += time.perf_counter() - t0
        if step + 1 == cfg.trainer.stop_after_steps:
            tqdm.write(f"stopped after step {step + 1} (trainer.stop_after_steps); continue with trainer.resume=auto")
            break
    monitor.close()
    summary = summarize(history, times, time.perf_counter() - t_run)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if cfg.trainer.report:
        from trainer.report import build_report
        summary["report"] = str(build_report(out_dir))
    print_summary(summary, out_dir)
    return summary


def _import_driver_modules() -> None:
    """Import what the driver uses before ray.init: a Ray Jobs driver cannot rely on importing
    from its working directory afterwards (seen with Ray 2.60: ModuleNotFoundError mid-run)."""
    import actors.group, actors.reward_worker, actors.rollout  # noqa: F401,E401
    import data.sampler, learner.batch, learner.grpo, learner.learner, learner.weight_sync  # noqa: F401,E401
    import trainer.checkpoint, trainer.evaluate, trainer.monitor, trainer.report, trainer.summary  # noqa: F401,E401


def sample_seed(seed: int, step: int, prompt_id: str) -> int:
    """The sampling seed of one prompt at one step: the same in a resumed run as in the original."""
    import zlib
    return zlib.crc32(f"{seed}/{step}/{prompt_id}".encode()) & 0x7FFFFFFF


def resume_if_asked(cfg, out_dir, learners, engines, sampler, meta) -> tuple[int, list]:
    """Restore learner state, data position and metrics from a checkpoint; push its weights."""
    import ray
    from trainer import checkpoint
    if not cfg.trainer.resume:
        return 0, []
    ckpt = checkpoint.latest(out_dir) if cfg.trainer.resume == "auto" else pathlib.Path(cfg.trainer.resume)
    if ckpt is None:
        print(f"trainer.resume=auto: no complete checkpoint in {out_dir}, starting fresh", flush=True)
        return 0, []
    if not (ckpt / "COMPLETE").is_file():
        raise SystemExit(f"{ckpt} is not a complete checkpoint (no COMPLETE marker)")
    state = json.loads((ckpt / "state.json").read_text())
    ray.get(learners.call("load_checkpoint", str(ckpt)))
    sampler.load_state(state["sampler"])
    ray.get(learners.call("broadcast_weights") + engines.call("receive_weights", meta))
    step, history = int(state["step"]), state["history"]
    metrics = out_dir / "metrics.jsonl"
    if metrics.exists():  # drop rows the interrupted run wrote after the checkpoint
        keep = [line for line in metrics.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
        metrics.write_text("".join(line + "\n" for line in keep))
    print(f"resumed from {ckpt} at step {step}", flush=True)
    return step, history


def save_checkpoint(out_dir, step, learners, sampler, history, keep) -> pathlib.Path:
    import ray
    from trainer import checkpoint
    tmp = checkpoint.staging(out_dir, step)
    ray.get(learners.call("save_checkpoint", str(tmp)))
    final = checkpoint.commit(tmp, step, {"step": step, "sampler": sampler.state(), "history": history})
    checkpoint.rotate(out_dir, keep)
    return final


def run_periodic_eval(engines, prompts, cfg, step, out_dir, monitor) -> dict:
    from trainer import evaluate
    metrics, records = evaluate.run_eval(engines, prompts, cfg.data.task)
    (out_dir / "eval").mkdir(exist_ok=True)
    evaluate.save(out_dir / "eval" / f"step_{step:06d}.json", metrics, records)
    monitor.log({"step": step, **{f"eval/{k}": v for k, v in metrics.items()}})
    return metrics


def eval_only(cfg, model_path: str, val: list, out_dir: pathlib.Path) -> dict:
    """mode=eval: greedy answers over the val files; a JSON file and a printed table."""
    from trainer import evaluate
    engines = create_engines(cfg, model_path)
    prompts = evaluate.subset(val, cfg.eval.max_samples, cfg.eval.subset_seed)
    t0 = time.perf_counter()
    metrics, records = evaluate.run_eval(engines, prompts, cfg.data.task)
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    path = out_dir / "eval_results.json"
    evaluate.save(path, {**metrics, "model": model_path, "val_files": cfg.data.val_files}, records)
    print(evaluate.format_table(metrics, f"{cfg.data.task} eval of {model_path}"))
    print(f"results: {path}")
    return metrics


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
    in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ  # a Ray Job ships the code as its working_dir
    env = {"PYTHONPATH": "" if in_job else os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "TORCH_EXTENSIONS_DIR": str(cache_root() / "torch_extensions"), "VLLM_CACHE_ROOT": str(cache_root() / "vllm"), "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0"),
           "TOKENIZERS_PARALLELISM": "false", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
           "VLLM_CPU_KVCACHE_SPACE": str(cfg.rollout.kv_cache_gb), "VLLM_CPU_OMP_THREADS_BIND": "nobind",
           "WANDB_MODE": cfg.wandb.mode, "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "ERROR")}
    c = cfg.cluster
    ACTOR_ENV.clear()
    ACTOR_ENV.update({k: v for k, v in env.items() if v})
    if c.address:
        # no runtime_env here: inside a Ray Job it would replace the job's own (its working_dir);
        # the variables go to each actor group instead (ACTOR_ENV), which merges with the job's
        ray.init(address=c.address, log_to_driver=True)
        if str(REPO) not in sys.path:  # a Ray Jobs driver loses the script's directory at ray.init
            sys.path.insert(0, str(REPO))
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    need = (cfg.rollout.num_engines * cfg.rollout.cpus_per_engine + cfg.learner.world_size * cfg.learner.cpus_per_rank
            + cfg.reward.num_workers * cfg.reward.cpus_per_worker)
    num_cpus = c.num_cpus or max(os.cpu_count() or 1, math.ceil(need))
    tmp = out_dir / "ray"
    if len(str(tmp)) > 40:  # Ray's unix sockets live ~64 chars below it; the limit is 107 bytes
        import zlib
        tmp = pathlib.Path("/tmp") / f"vr1-{zlib.crc32(str(out_dir).encode()):08x}"
    port = c.dashboard_port
    if c.include_dashboard and not _port_free(c.dashboard_host, port):  # e.g. a second run on this machine
        from learner.weight_sync import free_port
        port = free_port(c.dashboard_host)
        print(f"port {c.dashboard_port} is taken: this run's Ray dashboard is at http://{c.dashboard_host}:{port}",
              flush=True)
    kw = dict(num_cpus=num_cpus, include_dashboard=c.include_dashboard, dashboard_host=c.dashboard_host,
              dashboard_port=port, _temp_dir=str(tmp), runtime_env={"env_vars": env},
              log_to_driver=True, configure_logging=True, logging_level="WARNING")
    if c.metrics_port:
        kw["_metrics_export_port"] = c.metrics_port
    ray.init(**kw)


def _plain(node):
    from omegaconf import OmegaConf
    return OmegaConf.to_container(node, resolve=True)


def _port_free(host: str, port: int) -> bool:
    import socket
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
            return True
        except OSError:
            return False


def create_engines(cfg, model_path: str):
    from actors.group import ActorGroup
    from actors.rollout import RolloutEngine
    r = cfg.rollout
    return ActorGroup(RolloutEngine, r.num_engines, {"CPU": r.cpus_per_engine, "GPU": r.devices_per_engine if _has_gpu() else 0,
                                                     **r.resources}, "rollout", args=(model_path, _plain(r), cfg.seed), kwargs={"model_cfg": _plain(cfg.model)},
                      kwargs_fn=lambda i: {"index": i}, env=ACTOR_ENV)


def create_learners(cfg, model_path: str, per_rank_items: int):
    """The learner ranks, with DeepSpeed set up (rank 0 chooses the rendezvous address)."""
    import ray
    from actors.group import ActorGroup
    from learner.learner import Learner
    lc = cfg.learner
    learners = ActorGroup(Learner, lc.world_size, {"CPU": lc.cpus_per_rank, "GPU": lc.gpus_per_rank if _has_gpu() else 0,
                                                   **lc.resources}, "learner", kwargs=dict(world_size=lc.world_size, model_path=model_path, model_cfg=_plain(cfg.model),
                                                 cfg=_plain(lc), rollout_cfg=_plain(cfg.rollout), seed=cfg.seed,
                                                 total_steps=cfg.trainer.max_steps, per_rank_items=per_rank_items),
                          kwargs_fn=lambda i: {"rank": i}, env=ACTOR_ENV)
    host, port = ray.get(learners.actors[0].address.remote())
    ray.get(learners.call("setup", host, port))
    return learners


def create_roles(cfg, model_path: str):
    """Rollout engines, learner ranks and reward workers, then the weight-broadcast group between
    learner rank 0 and every engine worker."""
    import ray
    from actors.group import ActorGroup
    from actors.reward_worker import RewardWorker
    from learner.weight_sync import free_port
    r, lc, rc = cfg.rollout, cfg.learner, cfg.reward
    engines = create_engines(cfg, model_path)
    learners = create_learners(cfg, model_path, cfg.trainer.prompts_per_step * r.num_generations // lc.world_size)
    scorers = ActorGroup(RewardWorker, rc.num_workers, {"CPU": rc.cpus_per_worker, **rc.resources}, "reward",
                         args=(dict(rc.funcs), rc.box_convention), env=ACTOR_ENV)
    ray.get(engines.call("ready"))
    workers = ray.get(engines.call("num_workers"))
    world = 1 + sum(workers)
    host = ray.get(learners.actors[0].address.remote())[0]
    wport = free_port(host)
    offsets = [1 + sum(workers[:i]) for i in range(len(workers))]
    backend = "nccl" if _has_gpu() else "gloo"
    ray.get([learners.actors[0].init_weight_group.remote(host, wport, world)]
            + engines.call_each("init_weight_group", [(host, wport, o, world, backend) for o in offsets]))
    return engines, learners, scorers


def sft_loop(cfg, model_path: str, train: list, out_dir: pathlib.Path) -> dict:
    """mode=sft: supervised fine-tuning on the answers (the warm start), same learner and data."""
    import ray
    from tqdm import tqdm

    from data.sampler import PromptSampler
    from trainer.monitor import Monitor
    B = cfg.trainer.prompts_per_step
    if B % cfg.learner.world_size:
        raise SystemExit(f"trainer.prompts_per_step={B} must divide over learner.world_size={cfg.learner.world_size}")
    learners = create_learners(cfg, model_path, B // cfg.learner.world_size)
    sampler = PromptSampler(len(train), B, cfg.seed, cfg.data.shuffle, cfg.trainer.epochs)
    monitor = Monitor(out_dir, cfg.wandb, _plain(cfg))
    steps = min(cfg.trainer.max_steps, sampler.steps_available())
    history = []
    bar = tqdm(range(steps), desc="sft", dynamic_ncols=True)
    for step in bar:
        batch = [train[i] for i in sampler.next()]
        row = {"step": step + 1, **ray.get(learners.call_sharded("sft_step", batch))[0], "prompt_ids": [p.id for p in batch]}
        history.append(row)
        monitor.log(row)
        bar.set_postfix(loss=f"{row['sft_loss']:.3f}", acc=f"{row['token_acc']:.2f}")
    monitor.close()
    final = save_checkpoint(out_dir, steps, learners, sampler, history, cfg.trainer.keep_checkpoints)
    print(f"\nsft done: {steps} steps; loss {history[0]['sft_loss']:.3f} -> {history[-1]['sft_loss']:.3f}; "
          f"policy: {final / 'hf'} (use it as model.path)")
    return {"steps": steps, "loss_first": history[0]["sft_loss"], "loss_last": history[-1]["sft_loss"],
            "model_path": str(final / "hf")}


def _has_gpu() -> bool:
    import ray
    return ray.cluster_resources().get("GPU", 0) > 0


if __name__ == "__main__":
    main()
