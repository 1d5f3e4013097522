"""Rollout throughput: the project's vLLM rollout engine against Hugging Face ``generate``.

    python -m bench.rollout [--sizes tiny 30m 300m] [--prompts 16] [--G 8] [--tokens 64]
    python -m bench.rollout --sizes tiny 30m --dtypes bfloat16 float32 --engines eager compiled
    python -m bench.rollout --sizes 30m 400m --prompts 2 --engines compiled --blocks 128 auto
    python -m bench.rollout --sizes tiny 30m --prompts 2 --dtypes float32 --engines compiled --outputs vllm engine

Same model (random Qwen2.5-VL built from a config at each size), same synthetic REC prompts and
images, same G and completion length (EOS ignored so every completion has exactly ``--tokens``
tokens), sampling at temperature 1, both in the same precision (``--dtypes``). The engine runs
eager (``rollout.enforce_eager: true``, the default) and, with ``--engines ... compiled``, with
vLLM's torch.compile graph (``enforce_eager: false``; its start-up, compilation included, is
reported, from an empty compile cache); ``--blocks`` runs each engine at several KV-cache block
sizes (``rollout.block_size``: a prompt's samples share its prefill in full blocks; the prefix
cache is emptied before each run, as a weight update empties it); ``--outputs`` what each engine
returns (``plain``: tokens only, as HF ``generate``; ``engine``: a run's own request, seeds,
log-probs and text; ``vllm``: the same with vLLM's text and per-token dicts). Reports completion tokens/s of
each (best of 2 warm runs), the ratio to HF, and the fraction of this machine's compute roofline each reaches:
2 x parameters x tokens/s against the matmul FLOP/s the benchmark measures itself in the
row's precision. Writes
bench/results/rollout.json.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import tempfile
import time

from bench.common import machine, save, table
from conf.hardware import describe_cpu, native_bf16


def matmul_flops(dtype: str = "bfloat16", n: int = 2048, repeats: int = 10) -> float:
    """Matmul FLOP/s of this machine in ``dtype`` (all threads of this process). The roofline of
    each row is taken in that row's own precision: a CPU without native bf16 emulates it about 50x
    slower than fp32 (an AVX2-only EPYC spent ten minutes on this measurement in bf16), and its
    large matmuls slower still than the model's small ones, so there bf16 rows have no roofline."""
    import torch
    a, b = torch.randn(n, n, dtype=getattr(torch, dtype)), torch.randn(n, n, dtype=getattr(torch, dtype))
    a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - t0)


def _prompts(n: int):
    from data.loaders import load_prompts
    from data.prepare import ensure_synthetic
    from data.tiny_model import cache_root
    import conf
    cfg = conf.resolve(conf.load([]), cache_root())
    ensure_synthetic(cfg.data)
    return load_prompts(cfg.data.train_files, cfg.data.image_folders, "rec")[0][:n]


def run_vllm(model_dir: str, prompts, G: int, tokens: int, dtype: str = "bfloat16",
             compiled: bool = False, block: str = "auto", outputs: tuple = ("plain",)) -> tuple[dict, float]:
    """({outputs kind: best tokens/s}, engine start-up seconds) of one engine. ``block``:
    ``rollout.block_size``. ``outputs``: ``plain`` samples tokens only (as HF ``generate`` does);
    ``engine`` is a run's own request (per-prompt seeds, the sampled tokens' log-probs, the banned
    vision tokens) through ``RolloutEngine.generate``, text decoded once per completion; ``vllm`` the
    same request with vLLM's own text and per-token log-prob dicts (the engine before 2026-12-06)."""
    import conf
    from actors.rollout import RolloutEngine
    cfg = conf.OmegaConf.to_container(conf.load([f"rollout.num_generations={G}", f"rollout.max_new_tokens={tokens}",
                                                 f"rollout.dtype={dtype}", f"rollout.enforce_eager={not compiled}",
                                                 f"rollout.block_size={block}"]).rollout)
    t0 = time.perf_counter()
    engine = RolloutEngine(model_dir, cfg, seed=0)
    start = time.perf_counter() - t0
    from vllm import SamplingParams
    params = SamplingParams(n=G, temperature=1.0, max_tokens=tokens, min_tokens=tokens, ignore_eos=True)
    reqs = [engine._request(p) for p in prompts]
    pairs = [(p, 11 + i) for i, p in enumerate(prompts)]
    own = engine.sampling_params

    def fixed(n, greedy=False, seed=None, vllm_outputs=False):  # a run's request, every completion `tokens` long
        sp = own(n, greedy, seed)
        sp.min_tokens, sp.ignore_eos = tokens, True
        if vllm_outputs:
            sp.detokenize, sp.flat_logprobs = True, False
        return sp

    def run(kind) -> int:
        if kind == "plain":
            return sum(len(c.token_ids) for o in engine.llm.generate(reqs, params, use_tqdm=False) for c in o.outputs)
        if kind == "engine":
            return sum(len(r.completion_token_ids) for r in engine.generate(pairs))
        outs = engine.llm.generate([engine._request(p) for p, _ in pairs],  # (built per call, as engine's are)
                                   [fixed(G, seed=s, vllm_outputs=True) for _, s in pairs], use_tqdm=False)
        got = [(c.text, [next(iter(d.values())).logprob for d in c.logprobs])  # what the engine took from them
               for o in outs for c in o.outputs]
        return sum(len(lps) for _, lps in got)

    engine.sampling_params = fixed
    best = {kind: 0.0 for kind in outputs}
    for _ in range(3):  # first run warms up
        for kind in outputs:
            engine.llm.reset_prefix_cache()  # as after a weight update: no prompt cached from the last run
            t0 = time.perf_counter()
            n = run(kind)
            best[kind] = max(best[kind], n / (time.perf_counter() - t0))
    del engine
    return best, start


def run_hf(model_dir: str, prompts, G: int, tokens: int, dtype: str = "bfloat16") -> float:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from data.images import open_rgb
    from data.prompts import prompt_text
    proc = AutoProcessor.from_pretrained(model_dir)
    proc.tokenizer.padding_side = "left"
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
    texts = [prompt_text(proc, p.question, 1, "rec") for p in prompts]
    inputs = proc(text=texts, images=[open_rgb(p.images[0]) for p in prompts], return_tensors="pt", padding=True)
    best = 0.0
    for _ in range(2):
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**inputs, do_sample=True, temperature=1.0, top_k=0, num_return_sequences=G,
                                 max_new_tokens=tokens, min_new_tokens=tokens)
        n = (out.shape[1] - inputs["input_ids"].shape[1]) * out.shape[0]
        best = max(best, n / (time.perf_counter() - t0))
    return best


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["tiny", "30m", "300m"])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--G", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--dtypes", nargs="+", default=["bfloat16"], choices=["bfloat16", "float32"],
                    help="each system runs in each of these")
    ap.add_argument("--engines", nargs="+", default=["eager"], choices=["eager", "compiled"])
    ap.add_argument("--blocks", nargs="+", default=["auto"],
                    help="rollout.block_size values to run each engine at (auto: 32 on CPU; 128: vLLM's CPU default)")
    ap.add_argument("--outputs", nargs="+", default=["plain"], choices=["plain", "engine", "vllm"],
                    help="what each engine returns: plain (tokens, as HF generate), engine (a run's request: seeds, "
                         "log-probs, text decoded once), vllm (the same with vLLM's text and per-token dicts)")
    args = ap.parse_args(argv)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    from data.tiny_model import build
    emulated = not native_bf16()[0]
    flops = {d: None if d == "bfloat16" and emulated else matmul_flops(d) for d in args.dtypes}
    prompts = _prompts(args.prompts)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["VLLM_CACHE_ROOT"] = str(pathlib.Path(tmp) / "vllm")  # compiled: start-up with a cold cache
        for size in args.sizes:
            model_dir = str(build(pathlib.Path(tmp) / size, seed=0, size=size))
            import json
            params = json.loads((pathlib.Path(model_dir) / "BUILD.json").read_text())["parameters"]
            for dtype in args.dtypes:
                hf = run_hf(model_dir, prompts, args.G, args.tokens, dtype)
                got = [("HF generate (baseline)", hf, None)]
                for kind in args.engines:
                    for block in args.blocks:
                        tps, start = run_vllm(model_dir, prompts, args.G, args.tokens, dtype, kind == "compiled", block,
                                              tuple(args.outputs))
                        for out, rate in tps.items():
                            got.append((f"vLLM rollout engine, {kind}" + (f", KV block {block}" if args.blocks != ["auto"]
                                                                           else "")
                                        + (f", {out} outputs" if args.outputs != ["plain"] else ""), rate, start))
                for name, tps, start in got:
                    rows.append({"size": size, "parameters": params, "dtype": dtype, "system": name,
                                 "tokens_per_s": tps, "x_vs_hf": tps / hf, "roofline_frac": flops[dtype] and 2 * params * tps / flops[dtype],
                                 "start_s": start})
    print(f"## Rollout ({describe_cpu()}, {machine()['date']}; {args.prompts} prompts x G={args.G} x "
          f"{args.tokens} tokens; matmul GFLOP/s " + ", ".join(f"{d} {f / 1e9:.0f}" if f else f"{d} emulated (no roofline)"
                                                    for d, f in flops.items()) + ")\n")
    print(table(rows, ["size", "parameters", "dtype", "system", "tokens_per_s", "x_vs_hf", "roofline_frac", "start_s"]))
    print(f"\nsaved {save('rollout', rows)}")
    return rows


if __name__ == "__main__":
    main()
