"""Loaded by every Python process of a ``python -m bench.isa`` run (it puts this directory on
PYTHONPATH): once ``torch.cpu`` is imported, its AVX-512 and AMX probes answer False, so vLLM loads
its AVX2 kernels and attention, and torch.compile's ISA pick sees no AVX-512 (it also reads
ATEN_CPU_CAPABILITY). Does nothing unless ``VLMR1_ISA_CAP=avx2``."""
import importlib.abc
import importlib.machinery
import os
import sys

PROBES = ("_is_avx512_supported", "_is_avx512_vnni_supported", "_is_avx512_bf16_supported",
          "_is_amx_tile_supported", "_is_amx_fp16_supported")


def _no(*_args, **_kwargs) -> bool:
    return False


class _CapTorchCpu(importlib.abc.MetaPathFinder):
    """Finds ``torch.cpu`` as usual and makes its probes above AVX2 answer False once it has run."""

    def find_spec(self, name, path, target=None):
        if name != "torch.cpu":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            for probe in PROBES:
                if hasattr(module, probe):
                    setattr(module, probe, _no)

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("VLMR1_ISA_CAP") == "avx2":
    sys.meta_path.insert(0, _CapTorchCpu())
