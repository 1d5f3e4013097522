"""Run a benchmark as an older CPU would: torch, oneDNN, MKL, torch.compile and vLLM capped to an ISA.

    python -m bench.isa avx2 bench.e2e --sizes tiny 30m 400m --variants sync
    python -m bench.isa avx2 bench.rollout --sizes 30m --dtypes float32

On a CPU with AVX-512 this measures what an AVX2-only CPU's code paths and this project's defaults
do there: ``auto`` picks fp32 and torch's linear layers (conf.hardware honours the caps), torch's own
kernels and oneDNN's stop at AVX2, torch.compile emits AVX2 code, and vLLM loads its AVX2 kernels
(``_C_AVX2``) and attention. It is a proxy: the caches, clock and core of the CPU stay those of the
machine it runs on, so its figures are reported as such (every table names the cap) and never in
place of a measurement on the older CPU itself.

Every process of the run inherits the caps: the benchmark, TRL's subprocess, the Ray workers and the
engines (``bench/isa_site/sitecustomize.py`` makes ``torch.cpu`` report no AVX-512 or AMX, which is
what vLLM and torch.compile ask).
"""
from __future__ import annotations

import os
import pathlib
import sys

CAPS = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}}
SITE = pathlib.Path(__file__).resolve().parent / "isa_site"


def environment(isa: str, env: dict | None = None) -> dict:
    """``env`` (default: this process's) with the caps of ``isa`` and the site hook on PYTHONPATH.

    >>> e = environment("avx2", {"PYTHONPATH": "/x"})
    >>> e["ATEN_CPU_CAPABILITY"], e["PYTHONPATH"].split(":")[1], e["VLMR1_ISA_CAP"]
    ('avx2', '/x', 'avx2')
    """
    if isa not in CAPS:
        raise SystemExit(f"bench.isa: unknown ISA {isa!r}; choose one of {', '.join(CAPS)}")
    out = dict(os.environ if env is None else env, **CAPS[isa], VLMR1_ISA_CAP=isa)
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(SITE), out.get("PYTHONPATH", "")) if p)
    return out


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2 or argv[0] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0 if argv[:1] in (["-h"], ["--help"]) else 2)
    isa, module, rest = argv[0], argv[1], argv[2:]
    env = environment(isa)
    os.execve(sys.executable, [sys.executable, "-m", module, *rest], env)


if __name__ == "__main__":
    main()
