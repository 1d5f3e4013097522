"""LoRA weight sync: adapter-only against merged and full fine-tuning, on real roles.

    python -m bench.lora_sync [--sizes 50m 250m] [--r 64]

For each model size (random Qwen2.5-VL of ~100 MB / ~500 MB of bf16 weights) starts the real roles
(DeepSpeed learner, a vLLM engine, the gloo weight group) three times -- full fine-tuning
(``learner.lora.r=0``, the baseline), LoRA with ``learner.lora.sync=merged`` (base + delta of every
adapted layer) and LoRA with ``sync=adapter`` (only lora_A / lora_B; the engine serves the frozen
base plus the adapter through vLLM LoRA) -- and times the per-step update the orchestrator does
(best of 3), then the engine's decode throughput after it (greedy, 16 prompts x 64 tokens, best of
2): vLLM's LoRA kernels are not free, which is the other side of the trade. Writes
bench/results/lora_sync.json.
"""
from __future__ import annotations

import argparse
import pathlib
import tempfile
import time

from bench.common import machine, save, table

MODES = [("full", 0, "adapter"), ("lora merged", None, "merged"), ("lora adapter", None, "adapter")]


def measure(model_dir: str, tmp: str, r: int, sync: str, n_prompts: int = 16) -> dict:
    import ray

    import conf
    from trainer.roles import launch
    from data.loaders import load_prompts
    from data.synthetic import generate
    data = pathlib.Path(tmp) / "data"
    if not (data / "rec_train.jsonl").exists():
        generate(data, seed=0, n_train=32, n_val=8, n_ood=8, progress=False)
    cfg = conf.resolve(conf.load([
        f"model.path={model_dir}", f"data.synthetic.dir={data}", "learner.beta=0", "reward.num_workers=1", "trainer.prompts_per_step=1",
        f"learner.lora.r={r}", f"learner.lora.alpha={2 * r}", f"learner.lora.sync={sync}", "learner.zero_stage=2",
        "rollout.max_new_tokens=64", "rollout.dtype=bfloat16", "cluster.include_dashboard=false",
        f"trainer.output_dir={tmp}/out"]), pathlib.Path(tmp))
    try:
        cfg, pool, learners, _ = launch(cfg, model_dir, pathlib.Path(tmp) / "out")
        best, sent, phases = float("inf"), 0, {}
        for _ in range(3):
            t0 = time.perf_counter()
            pool.sync()
            took = time.perf_counter() - t0
            if took < best:
                best, sent = took, pool.sync_bytes
                phases = ray.get(pool.engines.actors[0].last_sync_timing.remote())
        prompts = load_prompts(cfg.data.train_files, cfg.data.image_folders, "rec")[0][:n_prompts]
        engine, tok_s = pool.engines.actors[0], 0.0
        for _ in range(2):  # (the first also loads the adapter the last sync wrote)
            t0 = time.perf_counter()
            out = ray.get(engine.generate.remote(prompts, 1, True))
            tok_s = max(tok_s, sum(len(x.completion_token_ids) for x in out) / (time.perf_counter() - t0))
        return {"MB_per_sync": sent / 1e6, "sync_s": best, "receive_s": phases.get("receive_s"),
                "load_s": phases.get("reload_s"), "decode_tok_per_s": tok_s}
    finally:
        ray.shutdown()


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["50m", "250m"])
    ap.add_argument("--r", type=int, default=64, help="LoRA rank (VLM-R1's LoRA recipe: 64)")
    args = ap.parse_args(argv)
    from conf.hardware import describe_cpu
    from data.tiny_model import build
    rows = []
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        for size in args.sizes:
            model_dir = str(build(pathlib.Path(tmp) / size, seed=0, size=size))
            for name, r, sync in MODES:
                row = {"size": size, "mode": name, "r": args.r if r is None else r,
                       **measure(model_dir, tmp, args.r if r is None else r, sync)}
                rows.append(row)
                print(row, flush=True)
            base = rows[-len(MODES)]  # full fine-tuning of the same size, same run
            for row in rows[-len(MODES):]:
                row["bytes_vs_full"] = row["MB_per_sync"] / base["MB_per_sync"]
                row["sync_s_vs_full"] = row["sync_s"] / base["sync_s"]
                row["decode_vs_full"] = row["decode_tok_per_s"] / base["decode_tok_per_s"]
    print(f"## LoRA weight sync ({describe_cpu()}; {machine()['date']}; bf16 engine, r={args.r})\n")
    print(table(rows, ["size", "mode", "r", "MB_per_sync", "bytes_vs_full", "sync_s", "sync_s_vs_full", "receive_s",
                       "load_s", "decode_tok_per_s", "decode_vs_full"]))
    print("\nload: engine 0 reloading the weights into vLLM (full, merged) or writing the adapter directory "
          "(adapter; vLLM reads it at the next generation, inside decode_tok_per_s's first repeat)")
    print(f"\nsaved {save('lora_sync', rows)}")
    return rows


if __name__ == "__main__":
    main()
