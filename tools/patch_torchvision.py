"""Make the CUDA-built torchvision wheel importable on a CPU-only torch.

Why: PyPI has no CPU build of torchvision for torch 2.13.0, and the CUDA build's compiled ops
do not load here. Its ``_meta_registrations.py`` guards most fake-op registrations with
``torchvision.extension._has_ops()`` but not the two for ``nms`` / ``qnms``, so ``import
torchvision`` raises ``RuntimeError: operator torchvision::nms does not exist``. transformers
needs torchvision to build the Qwen2.5-VL processor (transforms only, no compiled ops), so we
guard those two decorators. Idempotent; prints what it did. Run by ./setup.sh.
"""
from __future__ import annotations

import importlib.util
import pathlib
import sys

MARK = "# patched by vlm-r1-ray: guarded for CPU-only torch"


def main() -> int:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        print("torchvision is not installed; nothing to patch")
        return 0
    path = pathlib.Path(spec.submodule_search_locations[0]) / "_meta_registrations.py"
    text = path.read_text()
    if MARK in text:
        print(f"torchvision already patched ({path})")
        return 0
    patched = text
    for op in ("nms", "qnms"):
        old = f'@torch.library.register_fake("torchvision::{op}")\n'
        new = (f'@(torch.library.register_fake("torchvision::{op}") if torchvision.extension._has_ops()'
               f' else (lambda f: f))  {MARK}\n')
        if old not in patched:
            print(f"unexpected torchvision layout: no register_fake for {op} in {path}", file=sys.stderr)
            return 1
        patched = patched.replace(old, new)
    path.write_text(patched)
    print(f"patched torchvision nms/qnms fake registrations in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
