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
    from actors.group import role_of
    from trainer import modes
    for restart in range(cfg.trainer.max_restarts + 1):
        start_ray(cfg, out_dir)
        try:
            if cfg.mode == "eval":
                return modes.eval_only(cfg, model_path, val, out_dir)
            if cfg.mode == "sft":
                return modes.sft_loop(cfg, model_path, train, out_dir, save_checkpoint)
            return train_loop(cfg, model_path, train, val, out_dir)
        except ray.exceptions.RayActorError as e:
            if role_of(e) != "learner" or cfg.mode != "train":
                raise
            from trainer import checkpoint
            last = checkpoint.latest(out_dir)
            where = f"the last complete checkpoint is {last}" if last else "no checkpoint was written yet"
            if restart == cfg.trainer.max_restarts:
                raise SystemExit(f"a learner rank died ({e.__class__.__name__}); {where}. Continue with the same "
                                 f"command plus trainer.resume=auto (or set trainer.max_restarts to restart "
                                 f"automatically); the worker logs are under Ray's session dir.") from None
            print(f"a learner rank died; {where}: restarting every role and resuming from it "
                  f"(restart {restart + 1} of trainer.max_restarts={cfg.trainer.max_restarts})", flush=True)
            cfg.trainer.resume = "auto"
        finally:
            ray.shutdown()


def train_loop(cfg, model_path: str, train: list, val: list, out_dir: pathlib.Path) -> dict:
    import ray
    import torch
    from trainer.progress import progress, write

    from data.sampler import PromptSampler
    from learner.batch import item_from_rollout
    from learner.grpo import group_advantages
    from trainer import evaluate
    from trainer.monitor import Monitor
    from trainer.pipeline import BatchSource, check_staleness
    from trainer.sampling import DynamicSampler
    from rewards import resolve, validate_funcs, validate_params
    from rewards.schedule import RuleSchedule
    from trainer.summary import CpuMeter, drift_signals, print_summary, step_metrics, summarize

    from actors.reward_worker import ScorerPool
    from actors.roles import create_roles, plain, resolve_loop
    why = resolve_loop(cfg)  # trainer.max_staleness: auto -> a number, before the roles are sized for it
    K = cfg.trainer.max_staleness
    G = cfg.rollout.num_generations
    engines, learners, scorers = create_roles(cfg, model_path)  # engines: an EnginePool
    chosen = describe_choices(cfg, engines.engines.info, learners.info, why)
    scorer_pool = ScorerPool(scorers, cfg.reward.chunk_size, cfg.reward.timeout_s)
    sampler = PromptSampler(len(train), cfg.trainer.prompts_per_step, cfg.seed, cfg.data.shuffle, cfg.trainer.epochs)
    max_steps = min(cfg.trainer.max_steps, sampler.steps_available())
    start, history, in_flight = resume_if_asked(cfg, out_dir, learners, engines, sampler, train)
    rules = RuleSchedule(validate_funcs(dict(cfg.reward.funcs)), validate_params(plain(cfg.reward.params)),
                         plain(cfg.reward.schedules), max_steps, plain(cfg.reward.triggers))
    rules.replay(history)  # a resumed run: on_metric schedules continue from the saved rows
    monitor = Monitor(out_dir, cfg.wandb, plain(cfg))
    eval_set = evaluate.subset(val, cfg.eval.train_samples, cfg.eval.subset_seed)
    last_eval = latest_eval(out_dir, start)  # for hack/train_eval_gap (a resumed run: the newest saved one)
    if cfg.trainer.eval_steps and start == 0 and eval_set:
        last_eval = run_periodic_eval(engines, eval_set, cfg, 0, out_dir, monitor)
    times = {"rollout": 0.0, "reward": 0.0, "train": 0.0, "sync": 0.0, "eval_ckpt": 0.0}
    meter = CpuMeter([engines.engines, learners, scorers], machine_cores(cfg))

    ds = cfg.rollout.dynamic_sampling
    # next_batch(step): step's prompts, generated and scored with the engines' weights of now and
    # the step's reward rules (with dynamic sampling: groups without spread refilled); None: data used up
    metric = ds.metric and resolve(ds.metric)
    next_batch = BatchSource(engines, scorer_pool, train, sampler, rules, cfg.seed, DynamicSampler(
        cfg.trainer.prompts_per_step, ds.min_std, ds.max_rounds, metric, ds.oversample) if ds.enabled else None,
        ds.min_std, metric)
    if next_batch.dynamic:
        next_batch.dynamic.replay(history)  # a resumed run: the running share of groups with spread

    # the pipeline: with K > 0 the batches of steps start .. start+K-1 are generated before the
    # first update (all with the weights of version `start`); a resumed run brings its own
    while len(in_flight) < K and start + len(in_flight) < max_steps and (b := next_batch(start + len(in_flight))):
        in_flight.append(b)
    bar = progress(range(start, max_steps), desc="grpo", initial=start, total=max_steps)
    bad_steps = 0
    t_run = time.perf_counter()
    for step in bar:
        t_step = time.perf_counter()
        meter.start()
        # 1. the batch this step trains: generated K steps ago (K = 0: now, with the current weights)
        batch = in_flight.pop(0) if in_flight else next_batch(step)
        if batch is None:  # dynamic sampling's refills used prompts the later steps would have had
            write(f"the training data is used up after {step} steps (dynamic sampling refilled groups with "
                  "extra prompts): raise trainer.epochs to train longer")
            break
        check_staleness(batch, step, K)
        totals = torch.tensor([batch.scored[r.key]["total"] for r in batch.rollouts], dtype=torch.float64)
        adv = group_advantages(totals, G, cfg.learner.scale_rewards, cfg.learner.adv_eps)
        screened = screen_out(batch.rollouts, rules.screening(), adv)  # triggers that screen flagged completions
        items = [item_from_rollout(r, float(a)) for r, a in zip(batch.rollouts, adv)]

        # 2. the learner ranks update the policy on it; meanwhile (K > 0) the engines generate and
        #    the reward workers score the batch of step + K, with the weights of version `step`
        update = learners.call_sharded("train_step", items)
        if K and step + K < max_steps and (b := next_batch(step + K)):
            in_flight.append(b)
        t_wait = time.perf_counter()
        train_metrics = ray.get(update)[0]
        bad_steps = bad_steps + 1 if train_metrics["skipped_updates"] == cfg.learner.num_iterations else 0
        if bad_steps >= cfg.trainer.max_bad_steps:
            raise SystemExit(f"{bad_steps} steps in a row had a non-finite loss or gradient and were skipped "
                             f"(trainer.max_bad_steps={cfg.trainer.max_bad_steps}); last good checkpoint: "
                             f"{out_dir / 'checkpoints'}. Lower learner.lr or check the rewards/data of these steps.")
        # K = 0: this step generated its own batch before the update; K > 0: it generated step + K's
        # beside the update, and the driver's wall time splits that way
        fresh = batch.times if K == 0 else (in_flight[-1].times if in_flight and in_flight[-1].step == step + K else {})
        phase = {**batch.times, "train": time.perf_counter() - t_wait,
                 "rollout": fresh.get("rollout", 0.0), "reward": fresh.get("reward", 0.0)}

        # 3. push the new weights (version step + 1) to every engine
        t0 = time.perf_counter()
        engines.sync(version=step + 1)
        phase["sync"], phase["sync_bytes"] = time.perf_counter() - t0, engines.sync_bytes
        meter.stop()
        for k in ("rollout", "reward", "train", "sync"):
            times[k] += phase[k]

        # 4. log, then evaluate / checkpoint when due
        phase["step"] = time.perf_counter() - t_step
        row = {**step_metrics(step + 1, batch, totals, train_metrics, phase), **batch.rules}
        row.update(drift_signals(row, history[0] if history else None, last_eval), screened_frac=screened)
        events = rules.observe(step, row)  # scheduled rule changes taking effect from the next step
        if events:
            row["rule_events"] = events
            write("\n".join(f"reward rule change: {e}" for e in events))
        history.append(row)
        for warning in monitor.log(row):
            write(f"WARNING: {warning}")
        bar.set_postfix(reward=f"{row['reward/mean']:.3f}", kl=f"{row['kl']:.4f}")
        t0 = time.perf_counter()
        done_now = step + 1 == max_steps or step + 1 == cfg.trainer.stop_after_steps
        if cfg.trainer.eval_steps and eval_set and ((step + 1) % cfg.trainer.eval_steps == 0 or done_now):
            last_eval = run_periodic_eval(engines, eval_set, cfg, step + 1, out_dir, monitor)
        if done_now or (cfg.trainer.save_steps and (step + 1) % cfg.trainer.save_steps == 0):
            save_checkpoint(out_dir, step + 1, learners, sampler, history, cfg.trainer.keep_checkpoints, in_flight)
        times["eval_ckpt"] += time.perf_counter() - t0
        if step + 1 == cfg.trainer.stop_after_steps:
            write(f"stopped after step {step + 1} (trainer.stop_after_steps); continue with trainer.resume=auto")
            break
    monitor.close()
    summary = summarize(history, times, time.perf_counter() - t_run, meter.share(), K)
    summary["chosen"] = chosen
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if cfg.trainer.report:
        from trainer.report import build_report
        summary["report"] = str(build_report(out_dir))
    print_summary(summary, out_dir)
    return summary


def describe_choices(cfg, engine: dict, learner: dict, loop_reason: str = "set") -> dict:
    """What ``auto`` resolved to on each role's machine, printed once and kept in summary.json."""
    K = cfg.trainer.max_staleness
    chosen = {"loop": (f"asynchronous, max_staleness={K}" if K else "synchronous") + f" ({loop_reason})",
              "rollout": f"{engine['dtype']} ({engine['dtype_reason']}), {engine['threads']} threads",
              "learner": f"{learner['dtype']} ({learner['dtype_reason']}), {learner['threads']} threads, "
                         f"off_policy={cfg.learner.off_policy}, prefix_sharing={cfg.learner.prefix_sharing}",
              **({"lora": learner["lora"]} if "lora" in learner else {})}  # r and sync, chosen and why
    print("; ".join(f"{k}: {v}" for k, v in chosen.items()), flush=True)
    return chosen


def machine_cores(cfg) -> float:
    """Cores the run's utilisation is measured against: this machine's for a private local
    cluster, the joined cluster's CPUs otherwise."""
    import ray
    if cfg.cluster.address:
        return float(ray.cluster_resources().get("CPU", 1))
    return float(os.cpu_count() or 1)


DRIVER_PACKAGES = ("actors", "conf", "data", "learner", "models", "rewards", "trainer")


def _import_driver_modules() -> list[str]:
    """Import every module of the project before ray.init: a Ray Jobs driver cannot rely on
    importing from its working directory afterwards (seen with Ray 2.60: ModuleNotFoundError
    mid-run for a module first imported lazily). All of them, not a hand-kept list, so a new
    lazy import cannot bring the failure back. Returns the names imported."""
    import importlib
    import pkgutil
    names = []
    for pkg in DRIVER_PACKAGES:
        mod = importlib.import_module(pkg)
        names.append(pkg)
        for info in pkgutil.walk_packages(mod.__path__, prefix=f"{pkg}."):
            importlib.import_module(info.name)
            names.append(info.name)
    return names


def resume_if_asked(cfg, out_dir, learners, engines, sampler, train) -> tuple[int, list, list]:
    """Restore learner state, data position, metrics and the batches that were generated but not
    yet trained (asynchronous runs) from a checkpoint; push its weights to the engines."""
    import ray
    from trainer import checkpoint
    from trainer.pipeline import from_json
    if not cfg.trainer.resume:
        return 0, [], []
    ckpt = checkpoint.latest(out_dir) if cfg.trainer.resume == "auto" else pathlib.Path(cfg.trainer.resume)
    if ckpt is None:
        print(f"trainer.resume=auto: no complete checkpoint in {out_dir}, starting fresh", flush=True)
        return 0, [], []
    if not (ckpt / "COMPLETE").is_file():
        raise SystemExit(f"{ckpt} is not a complete checkpoint (no COMPLETE marker)")
    state = json.loads((ckpt / "state.json").read_text())
    saved = state.get("in_flight", [])
    if len(saved) > cfg.trainer.max_staleness:
        raise SystemExit(f"{ckpt} holds {len(saved)} generated batches waiting for training, more than "
                         f"trainer.max_staleness={cfg.trainer.max_staleness}: resume with "
                         f"trainer.max_staleness={len(saved)} (or more) so that none is dropped")
    ray.get(learners.call("load_checkpoint", str(ckpt)))
    sampler.load_state(state["sampler"])
    step, history = int(state["step"]), state["history"]
    engines.sync(version=step)
    by_id = {p.id: p for p in train}
    in_flight = [from_json(b, by_id) for b in saved]
    metrics = out_dir / "metrics.jsonl"
    if metrics.exists():  # drop rows the interrupted run wrote after the checkpoint
        keep = [line for line in metrics.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
        metrics.write_text("".join(line + "\n" for line in keep))
    print(f"resumed from {ckpt} at step {step}" + (f" with {len(in_flight)} generated batches" if in_flight else ""),
          flush=True)
    return step, history, in_flight


def save_checkpoint(out_dir, step, learners, sampler, history, keep, in_flight=()) -> pathlib.Path:
    import ray
    from trainer import checkpoint
    from trainer.pipeline import to_json
    tmp = checkpoint.staging(out_dir, step)
    ray.get(learners.call("save_checkpoint", str(tmp)))
    final = checkpoint.commit(tmp, step, {"step": step, "sampler": sampler.state(), "history": history,
                                          "in_flight": [to_json(b) for b in in_flight]})
    checkpoint.rotate(out_dir, keep)
    return final


def screen_out(rollouts, flags: frozenset, adv) -> float:
    """Set the advantage of every completion showing one of ``flags`` to 0 (in place): it stays out
    of the policy gradient. Returns the share screened."""
    if not flags:
        return 0.0
    from trainer import evaluate
    from trainer.summary import sample_flags
    hit = [bool(sample_flags(r, evaluate.record(r)) & flags) for r in rollouts]
    for i, h in enumerate(hit):
        if h:
            adv[i] = 0.0
    return sum(hit) / max(len(hit), 1)


def latest_eval(out_dir, step: int) -> dict | None:
    """Metrics of the newest evaluation saved at or before ``step`` (None if there is none)."""
    done = sorted(p for p in (out_dir / "eval").glob("step_*.json") if int(p.stem[5:]) <= step) \
        if (out_dir / "eval").is_dir() else []
    return json.loads(done[-1].read_text())["metrics"] if done else None


def run_periodic_eval(engines, prompts, cfg, step, out_dir, monitor) -> dict:
    from trainer import evaluate
    metrics, records = evaluate.run_eval(engines, prompts, cfg.data.task)
    (out_dir / "eval").mkdir(exist_ok=True)
    evaluate.save(out_dir / "eval" / f"step_{step:06d}.json", metrics, records)
    monitor.log({"step": step, **{f"eval/{k}": v for k, v in metrics.items()}})
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
    if not train:
        raise SystemExit(f"no usable training rows in {d.train_files}:\n{report.summary()}")
    val = []
    if d.val_files:  # images in data.val_image_folders, else searched in the training folders
        val = load_prompts(d.val_files, d.val_image_folders or d.image_folders, search_folders=not d.val_image_folders,
                           **kw)[0]
        if not val:
            raise SystemExit(f"no usable validation rows in {d.val_files}:\n{report.summary()}")
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
    if not c.address:  # a private local cluster: the project's sockets listen on cluster.node_host
        from learner.weight_sync import NODE_HOST_ENV
        env[NODE_HOST_ENV] = c.node_host
    from actors.roles import ACTOR_ENV
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
              dashboard_port=port, _temp_dir=str(tmp), runtime_env={"env_vars": env}, _node_ip_address=c.node_host,
              log_to_driver=True, configure_logging=True, logging_level="WARNING")
    if c.metrics_port:
        kw["_metrics_export_port"] = c.metrics_port
    ray.init(**kw)


def _port_free(host: str, port: int) -> bool:
    import socket
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
            return True
        except OSError:
            return False


if __name__ == "__main__":
    main()
