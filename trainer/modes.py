"""The two modes besides GRPO training (``orchestrator.py`` dispatches on ``mode``).

- ``mode=eval``: greedy answers over ``data.val_files`` from the rollout engines; a JSON file of
  every answer and a printed table.
- ``mode=sft``: supervised fine-tuning on the reference answers with the same learner, config and
  loaders (the warm start of the embedded default); the policy is saved in HF format at the end and
  every ``trainer.save_steps`` (0: only at the end), as in training.
"""
from __future__ import annotations

import pathlib
import time

from actors.engine_pool import EnginePool
from conf import plain
from data.sampler import PromptSampler
from trainer import checkpoint, evaluate
from trainer.monitor import Monitor
from trainer.progress import progress
from trainer.roles import create_engines, create_learners, describe_engine


def eval_only(cfg, model_path: str, val: list, out_dir: pathlib.Path, env: dict[str, str], session=None) -> dict:
    """``session``: a ``trainer.session.Session`` whose kept engine this run may use."""
    kept = session.engines(cfg, model_path, env) if session else None
    engines = kept or create_engines(cfg, model_path, env)
    engines.get(engines.call("ready"), "start-up", startup=True)  # (a large model's load: not a hung generate)
    engine = describe_engine(engines.get(engines.actors[0].info.remote(), "start-up", startup=True))
    print(f"engine: {engine}", flush=True)
    pool = EnginePool(engines, timeout_s=cfg.rollout.timeout_s)
    prompts = evaluate.subset(val, cfg.eval.max_samples, cfg.eval.subset_seed)
    t0 = time.perf_counter()
    metrics, records = evaluate.run_eval(pool, prompts, cfg.data.task)
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    path = out_dir / "eval_results.json"
    evaluate.save(path, {**metrics, "model": model_path, "val_files": cfg.data.val_files, "engine": engine}, records)
    print(evaluate.format_table(metrics, f"{cfg.data.task} eval of {model_path}"))
    print(f"results: {path}")
    return metrics


def sft_loop(cfg, model_path: str, train: list, out_dir: pathlib.Path, env: dict[str, str], session=None) -> dict:
    """``session``: a ``trainer.session.Session`` whose kept learner rank this run may use."""
    B = cfg.trainer.prompts_per_step
    if B % cfg.learner.world_size:
        raise SystemExit(f"trainer.prompts_per_step={B} must divide over learner.world_size={cfg.learner.world_size}")
    per_rank = B // cfg.learner.world_size
    kept = session.learners(cfg, model_path, per_rank, env) if session else None
    learners = create_learners(cfg, model_path, per_rank, env, group=kept)
    sampler = PromptSampler(len(train), B, cfg.seed, cfg.data.shuffle, cfg.trainer.epochs)
    monitor = Monitor(out_dir, cfg.wandb, plain(cfg))
    steps = sampler.steps_for(cfg.trainer.max_steps)
    history = []
    bar = progress(range(steps), desc="sft")
    for step in bar:
        t0 = time.perf_counter()
        batch = [train[i] for i in sampler.next()]
        row = {"step": step + 1, **learners.get(learners.call_sharded("sft_step", batch), f"sft step {step + 1}")[0],
               "prompt_ids": [p.id for p in batch], "time/step_s": time.perf_counter() - t0}
        history.append(row)
        monitor.log(row)
        bar.set_postfix(loss=f"{row['sft_loss']:.3f}", acc=f"{row['token_acc']:.2f}")
        every = cfg.trainer.save_steps
        if every and (step + 1) % every == 0 and step + 1 < steps:  # (the last step's is saved below)
            checkpoint.save(out_dir, step + 1, learners, sampler, history, cfg.trainer.keep_checkpoints)
    monitor.close()
    final = checkpoint.save(out_dir, steps, learners, sampler, history, cfg.trainer.keep_checkpoints)
    print(f"\nsft done: {steps} steps; loss {history[0]['sft_loss']:.3f} -> {history[-1]['sft_loss']:.3f}; "
          f"policy: {final / 'hf'} (use it as model.path)")
    return {"steps": steps, "loss_first": history[0]["sft_loss"], "loss_last": history[-1]["sft_loss"],
            "model_path": str(final / "hf")}
