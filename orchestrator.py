"""The training loop, top to bottom: GRPO on Ray with vLLM rollouts and a DeepSpeed learner.

    python orchestrator.py conf=ovd                      # the embedded default, on CPU
    python orchestrator.py conf=rec learner.lr=1e-6 trainer.max_steps=100
    python orchestrator.py --help                        # the shipped configs and the override syntax

One step: the rollout engines generate G completions for each of B prompts -> the reward workers
score them -> group-relative advantages -> the learner ranks update the policy -> the learner
broadcasts the new weights to the engines -> log, evaluate, save. Every key: ``conf/base.yaml``.
"""
from __future__ import annotations

import json
import pathlib
import sys
from concurrent.futures import ThreadPoolExecutor

import conf
from conf import cli
from data.tiny_model import cache_root, resolve_model_path


def main(argv: list[str] | None = None, session=None) -> dict:
    """One run. ``session``: a ``trainer.session.Session`` it runs in (Ray, and the engine and learner
    processes of the run before, kept for the next), for many short runs in one process."""
    cfg = cli.parse(sys.argv[1:] if argv is None else argv, cache_root())  # --help, --print-config; errors: exit 2
    # Heavy modules only once the command line is known to be good. torch first: loaded after Ray,
    # libtorch's bundled oneMKL can fail to dlopen itself in a Ray Jobs driver.
    import torch  # noqa: F401
    import ray

    from data.prepare import fit_to_engines, load_splits
    from trainer import checkpoint, cluster, modes
    out_dir = pathlib.Path(cfg.trainer.output_dir).resolve()
    with cli.user_errors():  # another run's directory, a missing file, no usable rows: one line, exit 2
        if cfg.mode != "eval":
            checkpoint.claim(out_dir, cfg.trainer.resume)
        train, val, report = load_splits(cfg.data, train=cfg.mode != "eval")
    model_path = resolve_model_path(cfg.model.path, cfg.seed)
    # rows too long for the engines are skips, counted with the model's processor: its imports take
    # seconds, spent while Ray starts
    fitting = ThreadPoolExecutor(1).submit(fit_to_engines, train, val, model_path, cfg.model,
                                           cfg.rollout.max_model_len, report, cfg.data.strict)
    env = session.start(cfg, out_dir) if session else cluster.start(cfg, out_dir)
    try:
        with cli.user_errors():
            train, val = fitting.result()
        print(report.summary(), flush=True)
        run_cfg, why = conf.resolve_auto(cfg, cluster.has_gpu())  # every cluster-level auto, once
        cluster.save_config(run_cfg, out_dir)
        if cfg.mode == "eval":
            return modes.eval_only(run_cfg, model_path, val, out_dir, env, session)
        if cfg.mode == "sft":
            return modes.sft_loop(run_cfg, model_path, train, out_dir, env, session)
        return grpo(run_cfg, why, model_path, env, train, val, out_dir, session=session)[0]
    finally:
        if session is None:
            ray.shutdown()
        else:
            session.end_run(failed=sys.exc_info()[0] is not None)


def grpo(cfg, why: dict, model_path: str, env: dict, train: list, val: list, out_dir: pathlib.Path,
         roles: tuple | None = None, session=None) -> tuple[dict, tuple]:
    """GRPO on built roles (``roles``: given, e.g. a test's that several runs share, else built
    here, from the engine and learner processes ``session`` kept, if any), starting the learner ranks
    afresh when one dies or hangs, up to ``trainer.max_restarts`` times (the engines and reward
    workers go on; the run resumes from its last checkpoint). Returns the summary and the roles, still up."""
    import ray

    from actors.group import RoleHung, shutdown_groups
    from trainer import checkpoint
    from trainer.roles import create_roles
    resume = cfg.trainer.resume
    for restart in range(cfg.trainer.max_restarts + 1):
        try:  # engines (an EnginePool, weight group open), learner ranks, reward workers
            if roles is None or restart:
                kept = session.groups(cfg, model_path, env) if session and roles is None else {}
                roles = create_roles(cfg, model_path, env, survivors=roles, **kept)
            return train_loop(cfg, why, roles, train, val, out_dir, resume), roles
        except (ray.exceptions.RayActorError, RoleHung) as e:  # a learner rank died or gave no answer
            if not checkpoint.restartable(e, out_dir, restart, cfg.trainer.max_restarts):
                raise
            resume = "auto"
            # the learner ranks go (a hung one too), the engines and reward workers stay; Ray stays up
            keep = [roles[0].engines, roles[2]] if roles else []
            shutdown_groups(keep=keep)


def train_loop(cfg, why: dict, roles: tuple, train: list, val: list, out_dir: pathlib.Path, resume: str | None) -> dict:
    """GRPO: ``cfg`` resolved (``conf.resolve_auto``; ``why``: its reasons), ``roles`` built
    (``trainer.roles.create_roles``); ``resume``: None, ``auto`` or a checkpoint directory."""
    import torch

    from actors.reward_worker import ScorerPool
    from data.sampler import PromptSampler
    from learner.batch import item_from_rollout
    from learner.grpo import group_advantages
    from rewards import validate_funcs, validate_params
    from rewards.schedule import RuleSchedule
    from trainer import checkpoint, cluster, evaluate
    from trainer.monitor import Monitor
    from trainer.pipeline import BatchSource, Prefetch
    from trainer.progress import progress, write
    from trainer.roles import describe_choices
    from trainer.sampling import dynamic_sampler
    from trainer.summary import StepTimes, drift_signals, print_summary, screen_out, step_metrics, summarize

    K, G, B = cfg.trainer.max_staleness, cfg.rollout.num_generations, cfg.trainer.prompts_per_step
    engines, learners, scorers = roles
    chosen = describe_choices(cfg, engines.engines.info, learners.info, why)
    sampler = PromptSampler(len(train), B, cfg.seed, cfg.data.shuffle, cfg.trainer.epochs)
    max_steps = sampler.steps_for(cfg.trainer.max_steps)
    start, history, waiting = checkpoint.resume(resume, out_dir, learners, engines, sampler, train, K)
    rc = cfg.reward
    rules = RuleSchedule(validate_funcs(dict(rc.funcs)), validate_params(conf.plain(rc.params)),
                         conf.plain(rc.schedules), max_steps, conf.plain(rc.triggers))
    rules.replay(history)  # a resumed run: on_metric schedules continue from the saved rows
    monitor = Monitor(out_dir, cfg.wandb, conf.plain(cfg))
    eval_set = evaluate.subset(val, cfg.eval.train_samples, cfg.eval.subset_seed)
    last_eval = evaluate.latest(out_dir, start)  # for hack/train_eval_gap (resumed: the newest saved one)
    if cfg.trainer.eval_steps and start == 0 and eval_set:
        last_eval = evaluate.periodic(engines, eval_set, cfg.data.task, 0, out_dir, monitor)
    batches = Prefetch(BatchSource(engines, ScorerPool(scorers, rc.chunk_size, rc.timeout_s), train, sampler, rules,
                                   cfg.seed, *dynamic_sampler(cfg.rollout.dynamic_sampling, B, history)),
                       K, max_steps, start, waiting)
    times = StepTimes([engines.engines, learners, scorers], cluster.machine_cores(cfg))
    bar = progress(range(start, max_steps), desc="grpo", initial=start, total=max_steps)
    bad_steps = 0
    for step in bar:
        times.start()
        # 1. generate + score: G samples of each prompt from the engines, scored by the reward workers
        #    (K = 0: now, with the current weights; K > 0: K steps ago, beside an earlier update)
        batch = batches.take(step)
        if batch is None:  # dynamic sampling's refills used prompts the later steps would have had
            write(f"the training data is used up after {step} steps (dynamic sampling refilled groups with "
                  "extra prompts): raise trainer.epochs to train longer")
            break
        # 2. advantages: relative to the group of G; completions a trigger flags are screened out
        totals = torch.tensor([batch.scored[r.key]["total"] for r in batch.rollouts], dtype=torch.float64)
        adv = group_advantages(totals, G, cfg.learner.scale_rewards, cfg.learner.adv_eps)
        screened = screen_out(batch.rollouts, rules.screening(), adv)
        # 3. update: the learner ranks train on their shards; meanwhile (K > 0) the engines generate
        #    and the reward workers score the batch of step + K, with the weights of version `step`
        update = learners.call_sharded("train_step", [item_from_rollout(r, float(a)) for r, a in zip(batch.rollouts, adv)])
        fresh = batches.ahead(step) if K else batch
        times.lap("ahead")
        train_metrics = learners.get(update, f"step {step + 1}'s update")[0]
        times.lap("train")
        bad_steps = bad_steps + 1 if train_metrics["skipped_updates"] == cfg.learner.num_iterations else 0
        if bad_steps >= cfg.trainer.max_bad_steps:
            raise SystemExit(f"{bad_steps} steps in a row had a non-finite loss or gradient and were skipped "
                             f"(trainer.max_bad_steps={cfg.trainer.max_bad_steps}); last good checkpoint: "
                             f"{out_dir / 'checkpoints'}. Lower learner.lr or check the rewards/data of these steps.")
        # 4. sync: the new weights (version step + 1) to every engine
        engines.sync(version=step + 1)
        times.lap("sync")
        # 5. log, then evaluate / save when due
        phase = times.stop(batch, fresh, engines.sync_bytes)  # the step's phases; the lap clock restarts
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
        done = step + 1 == max_steps or step + 1 == cfg.trainer.stop_after_steps
        if cfg.trainer.eval_steps and eval_set and ((step + 1) % cfg.trainer.eval_steps == 0 or done):
            last_eval = evaluate.periodic(engines, eval_set, cfg.data.task, step + 1, out_dir, monitor)
        if done or (cfg.trainer.save_steps and (step + 1) % cfg.trainer.save_steps == 0):
            checkpoint.save(out_dir, step + 1, learners, sampler, history, cfg.trainer.keep_checkpoints, batches.waiting)
        times.lap("eval_ckpt")
        if step + 1 == cfg.trainer.stop_after_steps:
            write(f"stopped after step {step + 1} (trainer.stop_after_steps); continue with trainer.resume=auto")
            break
    monitor.close()
    summary = {**summarize(history, times.total, times.wall(), times.meter.share(), K), "chosen": chosen}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if cfg.trainer.report:
        from trainer.report import build_report
        summary["report"] = str(build_report(out_dir))
    print_summary(summary, out_dir)
    return summary


if __name__ == "__main__":
    main()
