#!/usr/bin/env bash
# Create .venv with the pinned CPU environment. Idempotent: a second run only checks.
#   ./setup.sh          runtime deps
#   ./setup.sh --dev    plus test tools
# Why each step exists is in ../shared/PLATFORM.md ("Installing"); the short version is in comments.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
# 1. torch first, pinned, so the local CPU build is used (anything else pulls a multi-GB CUDA build).
$PIP install torch==2.13.0
# 2. everything else, with torch pinned again so nothing upgrades it.
$PIP install -r requirements.txt torch==2.13.0
if [ "${1:-}" = "--dev" ]; then
  $PIP install -r requirements-dev.txt torch==2.13.0
  # headless Chromium renders the HTML report in the tests (Debian's package; needs root)
  if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
        || echo "note: could not install chromium; the report rendering test will be skipped"
    else
      echo "note: install chromium (apt-get install chromium) to run the report rendering test"
    fi
  fi
fi
# 3. CUDA-linked wheels that break CPU imports (no CPU builds on PyPI): torchaudio breaks
#    transformers' processors, torchcodec breaks `import vllm`, triton is 1 GB of nothing on CPU.
$PIP uninstall -y torchaudio torchcodec triton >/dev/null 2>&1 || true
# 4. torchvision cannot be dropped (the Qwen2.5-VL processor needs it) but its meta registrations
#    for nms/qnms are unguarded and fail without compiled ops: guard them.
"$VENV/bin/python" tools/patch_torchvision.py
"$VENV/bin/python" -c "import torch, torchvision, transformers, vllm, ray, deepspeed; print('env ok: torch', torch.__version__, 'vllm', vllm.__version__, 'transformers', transformers.__version__)"
