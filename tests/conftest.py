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



# base.yaml's recipe over conf=rec's / conf=ovd's embedded one: the runs of the tests take those task
# files with the test model and check the reference model, the KL term and their own small step counts
from conf import base_recipe  # noqa: E402  (the repo is on the path from the top of this file)

VLM_R1_DEFAULTS = base_recipe()
