"""What ``auto`` means on the device a role runs on: its compute dtype, its CPU threads, and
whether the rollout engine compiles its model.

    dtype, why = resolve_dtype("auto", "rollout")     # ("float32", "CPU without avx512_bf16/amx_bf16: ...")
    threads = auto_threads(None, asynchronous=True, reserved=1, role="learner")
    K, why = resolve_staleness("auto", gpu=False, joined=False)  # (0, "auto: one CPU machine, ...")
    eager, why = resolve_eager("auto")                # (False, "auto: g++ found for torch.compile's CPU kernels")
    block, why = resolve_block_size("auto")           # (32, "auto: 32 on CPU, ...")

bf16 pays only where the device computes it natively: GPUs with bf16 units, CPUs with
AVX-512-BF16 or AMX. An AVX2-only CPU emulates bf16 matmuls several times slower than fp32
(measured on a 2-core EPYC Zen 3: vLLM generated 66 tokens/s in bf16 against 245 in fp32), so
``auto`` picks fp32 there. Each role resolves on its own machine (the driver may be a CPU head
of a GPU cluster) and reports what it chose and why. Imports torch only when asked about GPUs.
"""
from __future__ import annotations

import os

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
NAMES = {"rollout": {"bf16": "bfloat16", "fp32": "float32"}, "learner": {"bf16": "bf16", "fp32": "fp32"}}


def cpu_info(cpuinfo: str = "/proc/cpuinfo") -> dict[str, str]:
    """The first processor's fields of Linux ``/proc/cpuinfo`` (``model name``, ``vendor_id``,
    ``cpu family``, ``model``, ``flags``, ...); empty where that file does not exist."""
    fields: dict[str, str] = {}
    try:
        with open(cpuinfo) as f:
            for line in f:
                if not line.strip():
                    break  # the end of the first processor's block
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_flags(cpuinfo: str = "/proc/cpuinfo", env=None) -> set[str]:
    """The CPU's feature flags less those an ISA cap in ``env`` (default: this process's) keeps
    torch, oneDNN and MKL from using; empty where ``cpuinfo`` does not exist."""
    return capped(set(cpu_info(cpuinfo).get("flags", "").split()), env)[0]


# ISA caps torch, oneDNN and MKL honour, and the CPU flags each leaves out of use. Under a cap the
# flags above it say nothing of speed: torch's own kernels and oneDNN's stop at the cap (bf16
# matmuls ran 11x slower on an AVX-512-BF16 EPYC capped to AVX2), so ``auto`` must decide as on
# a CPU without them. bench.isa sets these to measure an AVX2-only CPU's defaults on a newer one.
_ABOVE_AVX2 = ("avx512", "amx")
ISA_CAPS = {
    "ATEN_CPU_CAPABILITY": {"default": ("avx2",) + _ABOVE_AVX2, "avx2": _ABOVE_AVX2},
    "ONEDNN_MAX_CPU_ISA": {"SSE41": ("avx",) + _ABOVE_AVX2, "AVX": ("avx2",) + _ABOVE_AVX2, "AVX2": _ABOVE_AVX2,
                           "AVX2_VNNI": _ABOVE_AVX2, "AVX2_VNNI_2": _ABOVE_AVX2,
                           "AVX512_CORE": ("avx512_bf16", "avx512_fp16", "avx512_vnni", "amx"),
                           "AVX512_CORE_VNNI": ("avx512_bf16", "avx512_fp16", "amx"),
                           "AVX512_CORE_BF16": ("avx512_fp16", "amx")},
    "MKL_ENABLE_INSTRUCTIONS": {"SSE4_2": ("avx",) + _ABOVE_AVX2, "AVX": ("avx2",) + _ABOVE_AVX2, "AVX2": _ABOVE_AVX2},
}


def capped(flags: set[str], env=None) -> tuple[set[str], str]:
    """``flags`` less those an ISA cap in ``env`` leaves unused, and the cap's description ('' if none).

    >>> capped({"avx2", "avx512f", "avx512_bf16"}, {"ATEN_CPU_CAPABILITY": "avx2"})
    ({'avx2'}, 'ATEN_CPU_CAPABILITY=avx2')
    >>> sorted(capped({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}, {"ONEDNN_MAX_CPU_ISA": "avx512_core"})[0])
    ['avx2', 'avx512f']
    >>> capped({"avx2"}, {})
    ({'avx2'}, '')
    """
    env = os.environ if env is None else env
    out, caps = set(flags), []
    for var, levels in ISA_CAPS.items():
        value = env.get(var, "")
        drop = levels.get(value.lower() if var == "ATEN_CPU_CAPABILITY" else value.upper())
        if drop is not None:
            caps.append(f"{var}={value}")
            out = {f for f in out if not f.startswith(drop)}
    return out, " ".join(caps)


def cpu_vendor(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's ``vendor_id`` (``GenuineIntel``, ``AuthenticAMD``, ...); empty where unknown."""
    return cpu_info(cpuinfo).get("vendor_id", "")


def native_bf16(flags: set[str] | None = None, gpu: bool | None = None) -> tuple[bool, str]:
    """(whether this device computes bf16 natively, a sentence saying why).

    >>> native_bf16({"avx2", "avx512_bf16"}, gpu=False)
    (True, 'CPU with avx512_bf16: native bf16')
    >>> native_bf16({"avx2", "fma"}, gpu=False)[0]
    False
    """
    if gpu is None:
        gpu = _cuda()
    if gpu:
        import torch
        name = torch.cuda.get_device_name()
        ok = bool(torch.cuda.is_bf16_supported())
        return ok, f"GPU {name} {'computes' if ok else 'does not compute'} bf16 natively"
    uncapped, cap = flags, ""
    if flags is None:
        uncapped = cpu_flags(env={})
        flags, cap = capped(uncapped)
    have = [f for f in NATIVE_BF16_FLAGS if f in flags]
    if have:
        return True, f"CPU with {'+'.join(have)}: native bf16"
    had = [f for f in NATIVE_BF16_FLAGS if f in uncapped]
    without = (f"CPU with {'+'.join(had)} capped by {cap}" if had
               else "CPU without avx512_bf16/amx_bf16")
    return False, f"{without}: bf16 would be emulated several times slower than fp32"


def resolve_dtype(value: str, role: str, flags: set[str] | None = None, gpu: bool | None = None) -> tuple[str, str]:
    """The dtype name ``role`` ("rollout" names: bfloat16/float32; "learner": bf16/fp32) uses
    for the configured ``value``, and why. Anything but ``auto`` is kept as configured.

    >>> resolve_dtype("auto", "rollout", {"avx2"}, gpu=False)[0], resolve_dtype("auto", "learner", {"amx_bf16"}, gpu=False)[0]
    ('float32', 'bf16')
    >>> resolve_dtype("bfloat16", "rollout", {"avx2"}, gpu=False)
    ('bfloat16', 'configured')
    """
    if value != "auto":
        return value, "configured"
    ok, why = native_bf16(flags, gpu)
    return NAMES[role]["bf16" if ok else "fp32"], f"auto: {why}"


def auto_threads(configured: int | None, asynchronous: bool, reserved: float, cores: int | None = None,
                 role: str = "rollout") -> int:
    """OpenMP/torch threads of a role: ``configured`` if set; otherwise, when the loop is
    synchronous (roles take turns), every core of the machine; when it is asynchronous (engine and
    learner run side by side), the engine keeps to its reserved CPUs while the learner still gets
    every core: on CPUs the update costs two to three times the generation of the same samples, so
    an engine that finishes its batch early would otherwise leave its core idle. Measured on 2
    cores (30M model, G=8): learner 2 + engine 1 threads 1.35 samples/s at 95% CPU, against 1.29
    at 72% with 1 + 1 and 0.91 with 2 + 2.

    >>> auto_threads(None, asynchronous=False, reserved=1, cores=8), auto_threads(3, True, 1, 8)
    (8, 3)
    >>> auto_threads(None, True, 1, 8, role="rollout"), auto_threads(None, True, 1, 8, role="learner")
    (1, 8)
    """
    if configured:
        return int(configured)
    cores = max(1, cores if cores is not None else len(os.sched_getaffinity(0)))
    if asynchronous and role == "rollout":
        return max(1, int(reserved))
    return cores


def resolve_staleness(value, gpu: bool, joined: bool, off_policy: str = "bypass") -> tuple[int, str]:
    """``trainer.max_staleness`` as a number, and why. ``auto`` overlaps rollout and training
    (K = 1) where the roles have devices of their own -- GPUs, or a Ray cluster that was joined,
    whose nodes each role may have to itself -- and keeps the synchronous loop (K = 0) on one CPU
    machine, where both roles share the same cores: there the synchronous loop already keeps them
    busy (90% of 2 cores at 30M) and overlapping only splits them (measured in ``bench.e2e``).

    >>> resolve_staleness("auto", gpu=True, joined=False)
    (1, 'auto: rollout and learner on devices of their own overlap')
    >>> resolve_staleness("auto", gpu=False, joined=False)[0], resolve_staleness(2, gpu=False, joined=False)
    (0, (2, 'set'))
    >>> resolve_staleness("auto", gpu=True, joined=True, off_policy="none")[0]
    0
    """
    if value != "auto":
        return int(value), "set"
    if off_policy == "none":
        return 0, "auto: learner.off_policy=none trains on-policy only"
    if gpu or joined:
        return 1, "auto: rollout and learner on devices of their own overlap"
    return 0, "auto: one CPU machine, rollout and learner share its cores and take turns with all of them"


def resolve_lora_sync(value: str, gpu: bool) -> tuple[str, str]:
    """``learner.lora.sync`` as ``adapter`` or ``merged``, and why. ``auto`` sends only the adapters
    where the engines run vLLM's GPU LoRA kernels, and merged weights on CPU, where serving the
    adapter halved decode throughput (``bench.lora_sync``: 0.5x at 100 and 500 MB, r=64), which
    costs more than the smaller sync saves.

    >>> resolve_lora_sync("auto", gpu=True)[0], resolve_lora_sync("auto", gpu=False)[0], resolve_lora_sync("adapter", False)
    ('adapter', 'merged', ('adapter', 'set'))
    """
    if value != "auto":
        return value, "set"
    if gpu:
        return "adapter", "auto: GPU engines serve the base plus the adapter with vLLM's LoRA kernels"
    return "merged", "auto: CPU engines decode about 2x slower with a LoRA adapter than with merged weights"


def resolve_eager(value, gpu: bool | None = None, compiler: str | None = None) -> tuple[bool, str]:
    """``rollout.enforce_eager`` as a bool, and why. ``auto`` compiles the engine's model
    (torch.compile; CUDA graphs on GPUs) wherever that can build -- on a GPU, and on a CPU that has
    a C++ compiler for Inductor's CPU kernels -- and runs eager otherwise. Compiling costs 15-55 s at
    each engine start (less with vLLM's compile cache warm) and repays it over a run of hundreds of
    steps: the quickstart's 1M model generated 1.2-1.4x faster compiled on an AVX2-only EPYC
    (docs/benchmarks.md). ``compiler``: the C++ compiler found (None: look on ``PATH``).

    >>> resolve_eager("auto", gpu=False, compiler="")[0], resolve_eager("auto", gpu=False, compiler="/usr/bin/g++")[0]
    (True, False)
    >>> resolve_eager(True, gpu=False)
    (True, 'configured')
    """
    if value != "auto":
        return bool(value), "configured"
    if gpu is None:
        gpu = _cuda()
    if gpu:
        return False, "auto: torch.compile and CUDA graphs on the GPU"
    if compiler is None:
        import shutil
        found = (shutil.which(c) for c in (os.environ.get("CXX"), "g++", "c++", "clang++") if c)
        compiler = next(filter(None, found), "")
    if compiler:
        return False, f"auto: {os.path.basename(compiler)} found for torch.compile's CPU kernels"
    return True, "auto: no C++ compiler on PATH for torch.compile's CPU kernels (install g++ to compile)"


CPU_BLOCK = 32  # the smallest KV block vLLM's CPU attention takes (it asks for multiples of 32)


def resolve_block_size(value, gpu: bool | None = None) -> tuple[int | None, str]:
    """``rollout.block_size``: the engine's KV-cache block in tokens (None: vLLM's own default), and why.

    The G samples of a prompt are G requests to vLLM; in the step that prefills them, every full
    block of the prompt computed for the first is a prefix-cache hit for the others, so only the
    prompt's last partial block is computed G times. vLLM's CPU default is 128 tokens, which
    shares nothing of a prompt under 129 tokens and up to 127 tokens per sample of longer ones;
    ``auto`` takes 32 on a CPU (a 30M model prefilled 2 prompts x G=8 in 456 tokens instead of
    1,576; generation 1.3x faster, same samples: docs/benchmarks.md) and keeps vLLM's default on
    GPUs (16).

    >>> resolve_block_size("auto", gpu=False)[0], resolve_block_size("auto", gpu=True)[0], resolve_block_size(64)[0]
    (32, None, 64)
    """
    if gpu is None:
        gpu = _cuda()
    if value != "auto":
        if not gpu and value % CPU_BLOCK:
            raise ValueError(f"rollout.block_size={value}: vLLM's CPU attention takes multiples of {CPU_BLOCK}")
        return int(value), "configured"
    if gpu:
        return None, "auto: vLLM's default on GPUs"
    return CPU_BLOCK, (f"auto: {CPU_BLOCK} on CPU, the smallest vLLM's CPU attention takes: a prompt's G samples "
                       "share its full blocks when they are prefilled together")


def speed_flags(flags: set[str] | None = None) -> list[str]:
    """The CPU flags that decide bf16 speed, of those this CPU has (for benchmark records)."""
    flags = cpu_flags() if flags is None else flags
    return [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]


def describe_cpu(cpuinfo: str = "/proc/cpuinfo") -> str:
    """One line naming the CPU (with its family and model where the name is as vague as a VM's
    "AMD EPYC": family 25 model 17 is a Zen 4) and the flags that decide bf16 speed (for benchmark tables)."""
    fields = cpu_info(cpuinfo)
    name = fields.get("model name") or "unknown CPU"
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    flags, cap = capped(set(fields.get("flags", "").split()))
    marks = speed_flags(flags)
    used = f" (capped by {cap})" if cap else ""
    return f"{name}, {os.cpu_count()} cores, flags{used}: {' '.join(marks) or 'none of avx2/avx512/amx'}"


def _cuda() -> bool:
    try:
        import torch
        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - a torch without CUDA support
        return False


def resolve_pack_mb(value, gpu: bool) -> float:
    """``rollout.sync_pack_mb`` in MB: auto is 64 MB packs with NCCL (GPUs) and one broadcast per
    tensor (0) with gloo, where packing measured slower (bench.broadcast: 0.71x at 457 MB to one engine).

    >>> resolve_pack_mb("auto", gpu=True), resolve_pack_mb("auto", gpu=False), resolve_pack_mb(16, gpu=False)
    (64.0, 0.0, 16.0)
    """
    return float(value) if value != "auto" else (64.0 if gpu else 0.0)
