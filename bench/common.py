"""Shared helpers of the benchmarks: machine description, timing, table printing, JSON output."""
from __future__ import annotations

import json
import os
import pathlib
import platform
import time


def machine() -> dict:
    """What the numbers were measured on, the CPU flags that decide bf16 speed included."""
    from conf.hardware import cpu_flags
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    flags = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in cpu_flags()]
    return {"cpu": cpu, "flags": " ".join(flags), "cores": os.cpu_count(), "mem_gib": round(mem_gb, 1),
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def best_of(fn, repeats: int = 3) -> float:
    """Fastest wall time of ``repeats`` calls (the least disturbed by other load)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def table(rows: list[dict], columns: list[str]) -> str:
    """A markdown table of ``rows`` restricted to ``columns``."""
    def fmt(v):
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def save(name: str, rows: list[dict], out_dir: str | os.PathLike = "bench/results") -> pathlib.Path:
    """Write ``{machine, rows}`` as JSON under ``out_dir`` and return the path."""
    path = pathlib.Path(out_dir)
    path.mkdir(parents=True, exist_ok=True)
    out = path / f"{name}.json"
    out.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    return out
