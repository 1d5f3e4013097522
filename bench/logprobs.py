"""The learner's token log-probs: the fused pass of ``learner.grpo.token_logprobs`` against autograd.

    python -m bench.logprobs [--rows 4] [--tokens 256] [--vocab 151936] [--dtypes bf16 fp32]

Both compute, for ``rows`` completions of ``tokens`` positions over a vocabulary of ``vocab`` (Qwen's
151,936 by default), the sampled tokens' log-probs at temperature 0.9, the entropy of each position
(a logged metric) and the gradient of the log-probs with respect to the logits. ``autograd`` is the
learner's code before the fused pass: a float32 copy of the logits divided by the temperature,
log-sum-exp through autograd chunk by chunk, and the entropy from a second log-softmax; ``fused`` keeps
for the backward pass only the logits as they are and one float per position, and recomputes the
softmax chunk by chunk in the backward pass. Each variant runs in a fresh process; peak memory is the
growth of the process's peak resident size over what it held with the logits made (the logits
themselves excluded). Prints a table with ratios against ``autograd`` measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

from bench.common import machine, save, table

TEMPERATURE = 0.9


def autograd_pass(logits, tokens, chunk: int = 4):  # (chunks of rows, as the learner had them)
    """The learner's log-probs and entropy before the fused pass (the baseline)."""
    import torch
    lg_all = logits.float() / TEMPERATURE
    logp = torch.cat([lg.gather(-1, tk.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(lg, dim=-1)
                      for lg, tk in zip(lg_all.split(chunk), tokens.split(chunk))])
    ent = []
    with torch.no_grad():
        for lg in lg_all.detach().split(chunk):
            lp = torch.log_softmax(lg, dim=-1)
            ent.append(-(lp.exp() * lp).sum(-1))
    return logp, torch.cat(ent)


def fused_pass(logits, tokens):
    from learner.grpo import token_logprobs
    return token_logprobs(logits, tokens, TEMPERATURE, entropy=True)


def _measure(variant: str, rows: int, tokens: int, vocab: int, dtype: str, repeats: int) -> dict:
    """In this (fresh) process: best forward+backward time, extra peak memory, the results' checksums."""
    import resource
    import time

    import torch
    torch.manual_seed(0)
    logits = torch.empty(rows, tokens, vocab, dtype=torch.bfloat16 if dtype == "bf16" else torch.float32)
    for i in range(rows):  # row by row: no float32 temporary of the whole batch before the baseline is read
        logits[i] = 3 * torch.randn(tokens, vocab)
    logits.requires_grad_()
    targets = torch.randint(0, vocab, (rows, tokens))
    fn = fused_pass if variant == "fused" else autograd_pass
    fn(logits[:1, :8], targets[:1, :8])  # warm-up: first-call set-up out of the timing
    base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    best = float("inf")
    for _ in range(repeats):
        logits.grad = None
        t0 = time.perf_counter()
        logp, ent = fn(logits, targets)
        logp.sum().backward()
        best = min(best, time.perf_counter() - t0)
    peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_kb) / 1024
    return {"seconds": best, "extra_peak_mb": peak_mb, "logp_sum": float(logp.double().sum()),
            "ent_sum": float(ent.double().sum()), "grad_abs_sum": float(logits.grad.double().abs().sum())}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4, help="completions in the micro-batch")
    ap.add_argument("--tokens", type=int, default=256, help="positions per completion")
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--dtypes", nargs="+", choices=["bf16", "fp32"], default=["bf16", "fp32"])
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    rows = []
    for dtype in a.dtypes:
        res = {}
        for variant in ("autograd", "fused"):
            code = ("import json, sys; from bench.logprobs import _measure; "
                    "print(json.dumps(_measure(*json.loads(sys.argv[1]))))")
            args = json.dumps([variant, a.rows, a.tokens, a.vocab, dtype, a.repeats])
            proc = subprocess.run([sys.executable, "-c", code, args], capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"bench.logprobs {variant} {dtype} failed:\n{proc.stderr[-2000:]}")
            res[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
        logits_mb = a.rows * a.tokens * a.vocab * (2 if dtype == "bf16" else 4) / 2**20
        for variant, r in res.items():
            base = res["autograd"]
            rows.append({"dtype": dtype, "variant": variant, "logits_MB": logits_mb, "fwd_bwd_s": r["seconds"],
                         "x_speed": base["seconds"] / r["seconds"], "extra_peak_MB": r["extra_peak_mb"],
                         "x_memory": r["extra_peak_mb"] / base["extra_peak_mb"] if base["extra_peak_mb"] else None,
                         "logp_rel_diff": abs(r["logp_sum"] - base["logp_sum"]) / abs(base["logp_sum"]),
                         "grad_rel_diff": abs(r["grad_abs_sum"] - base["grad_abs_sum"]) / base["grad_abs_sum"]})
    from conf.hardware import describe_cpu
    print(f"\n## Token log-probs, entropy and their gradient ({describe_cpu()}, {machine()['date']}): "
          f"{a.rows} x {a.tokens} positions, vocabulary {a.vocab}, best of {a.repeats}\n")
    print(table(rows, ["dtype", "variant", "logits_MB", "fwd_bwd_s", "x_speed", "extra_peak_MB", "x_memory",
                       "logp_rel_diff", "grad_rel_diff"]))
    print("\nextra_peak_MB: growth of the peak resident memory over the process with its logits made; x_memory: "
          "against autograd (lower is better); *_rel_diff: relative difference of the sums against autograd.")
    print(f"\nsaved {save('logprobs', rows)}")
    return rows


if __name__ == "__main__":
    main()
