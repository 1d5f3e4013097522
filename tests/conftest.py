"""Shared fixtures: a tiny model and a small synthetic dataset, built once per test session."""
import os
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    from data.tiny_model import build
    return str(build(tmp_path_factory.mktemp("model") / "tiny", seed=0))


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory) -> pathlib.Path:
    from data.synthetic import generate
    out = tmp_path_factory.mktemp("synthetic")
    generate(out, seed=0, n_train=64, n_val=16, n_ood=16, progress=False)
    return out

