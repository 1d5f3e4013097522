"""The learner's update with shared prompts: blockwise attention (``learner.attention``) against SDPA
over the whole masked row, and against the unshared batch.

    python -m bench.attention [--sizes 30m 400m] [--dtypes fp32 bf16] [--reps 4]

One DeepSpeed learner (ZeRO-0, one rank, as ``bench.e2e`` runs it) on the random Qwen2.5-VL of each
size, B=2 REC prompts x G=8 completions of 64 tokens (``bench.e2e``'s step), beta 0.04 (the
reference pass included). Each round times one ``train_step`` of every variant on the same items, in
turn, so that the machine's drift reaches all of them alike; reports the best and the median round:

- ``blockwise``: the default, each completion slot attending to its prompt and itself;
- ``masked row`` (the baseline): the same shared rows through SDPA over all ``P + G*S`` columns,
  the other slots masked out (the learner before ``learner.attention``);
- ``unshared``: every completion with its own copy of the prompt (``learner.prefix_sharing=false``).

``logp_diff`` is the largest difference of the completions' log-probs from the masked row's.
Writes bench/results/attention.json.
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import tempfile
import time

from bench.common import machine, save, table
from conf.hardware import describe_cpu

VARIANTS = ("masked row", "blockwise", "unshared")


def _items(model_dir: str, syn: pathlib.Path, prompts: int, G: int, tokens: int):
    import json

    import torch
    from transformers import AutoProcessor

    from data.prompts import prompt_inputs
    from samples import TrainItem
    proc = AutoProcessor.from_pretrained(model_dir)
    rows = [json.loads(x) for x in open(syn / "rec_train.jsonl")][:prompts]
    g = torch.Generator().manual_seed(0)
    items = []
    for row in rows:
        img = str(syn / row["image"])
        ids = prompt_inputs(proc, row["conversations"][0]["value"], [img], "rec")["input_ids"][0].tolist()
        for s in range(G):
            comp = torch.randint(10, 300, (tokens,), generator=g).tolist()
            items.append(TrainItem((row["id"], s), ids, comp, (img,), float(s % 3 - 1),
                                   [-1.0] * len(comp)))
    return items


def step_args(ap: argparse.ArgumentParser) -> None:
    """The step's shape: ``--prompts`` B, ``--generations`` G, ``--tokens`` S (``bench.e2e``'s by default)."""
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64, help="completion length")


def steps(a: argparse.Namespace, prefix: str):
    """``(size, model_dir, items)`` for each of ``a.sizes``: the random Qwen2.5-VL of that size and one
    step of train items on synthetic REC prompts (built in a temporary directory, gone afterwards)."""
    from data.synthetic import generate
    from data.tiny_model import build
    with tempfile.TemporaryDirectory(dir="/tmp", prefix=prefix) as tmp:
        tmp = pathlib.Path(tmp)
        generate(tmp / "syn", seed=0, n_train=max(8, a.prompts), n_val=2, n_ood=2, progress=False)
        for size in a.sizes:
            model_dir = str(build(tmp / size, seed=0, size=size))
            yield size, model_dir, _items(model_dir, tmp / "syn", a.prompts, a.generations, a.tokens)


def report(name: str, title: str, a: argparse.Namespace, rows: list[dict], columns: list[str], legend: str) -> None:
    """Print the table of a learner benchmark (titled with the machine and the step's shape) and its
    legend, and save ``rows`` as bench/results/<name>.json."""
    m = machine()
    print(f"\n## {title} ({describe_cpu()}, {m['date']}): "
          f"B={a.prompts}, G={a.generations}, {a.tokens} tokens, {a.reps} rounds\n")
    print(table(rows, columns))
    print(f"\n{legend}")
    print(f"\nsaved {save(name, rows)}")


def _variant(lr, name: str) -> None:
    """Point the learner at one variant: the policy's and the reference's attention, and sharing."""
    from learner.attention import NAME
    impl = "sdpa" if name == "masked row" else NAME
    for model in (lr.engine.module, lr.ref):
        if model is not None:
            model.config.text_config._attn_implementation = impl
    lr.cfg["prefix_sharing"] = name != "unshared"


def rounds(model_dir: str, items, overrides: list[str], variants, switch, reps: int):
    """One learner (ZeRO-0, one rank, lr 1e-6, beta 0.04, plus ``overrides``) and, for each variant
    (``switch(learner, name)`` points it there), the completions' log-probs before any update and the
    times of ``reps`` train steps, every round timing each variant once in turn after a warm-up
    step each: ``(learner, {name: log-probs}, {name: [seconds]})``."""
    import conf
    from learner.learner import Learner
    from weights.net import free_port
    c = conf.load(["learner.lr=1e-6", "learner.beta=0.04", f"learner.micro_batch_size={len(items)}", *overrides])
    plain = lambda n: conf.OmegaConf.to_container(n, resolve=True)  # noqa: E731
    lr = Learner(0, 1, model_dir, plain(c.model), plain(c.learner), plain(c.rollout), seed=0, total_steps=reps + 2,
                 per_rank_items=len(items))
    lr.setup("127.0.0.1", free_port())
    logp, times = {}, {v: [] for v in variants}
    for v in variants:  # (before any update: the same weights for all)
        switch(lr, v)
        logp[v] = lr.logprobs(items)
    for v in variants:
        switch(lr, v)
        lr.train_step(items)  # warm-up
    for _ in range(reps):
        for v in variants:
            switch(lr, v)
            t0 = time.perf_counter()
            lr.train_step(items)
            times[v].append(time.perf_counter() - t0)
    return lr, logp, times


def logp_diff(a: list[list[float]], b: list[list[float]]) -> float:
    """The largest difference between two sets of completions' log-probs."""
    return max(abs(x - y) for u, v in zip(a, b) for x, y in zip(u, v))


def measure(model_dir: str, items, dtype: str, reps: int) -> dict:
    _, logp, times = rounds(model_dir, items, [f"learner.dtype={dtype}"], VARIANTS, _variant, reps)
    diff = {v: logp_diff(logp[v], logp["masked row"]) for v in VARIANTS}
    return {v: {"best": min(times[v]), "median": statistics.median(times[v]), "logp_diff": diff[v]} for v in VARIANTS}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["30m", "400m"])
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--reps", type=int, default=4, help="timed rounds (each times every variant once)")
    step_args(ap)
    a = ap.parse_args(argv)
    rows = []
    for size, model_dir, items in steps(a, "attn"):
        for dtype in a.dtypes:
            print(f"[{size}, {dtype}] ...", flush=True)
            got = measure(model_dir, items, dtype, a.reps)
            base = got["masked row"]["median"]
            for v in VARIANTS:
                rows.append({"size": size, "dtype": dtype, "variant": v + (" (baseline)" if v == "masked row" else ""),
                             "best_s": got[v]["best"], "median_s": got[v]["median"],
                             "x_masked_row": base / got[v]["median"], "logp_diff": got[v]["logp_diff"]})
    report("attention", "Learner update, shared prompts", a, rows,
           ["size", "dtype", "variant", "best_s", "median_s", "x_masked_row", "logp_diff"],
           "x_masked_row: the masked row's median over this variant's (same run, same items); logp_diff: the largest "
           "difference of the completions' log-probs from the masked row's")
    return rows


if __name__ == "__main__":
    main()
