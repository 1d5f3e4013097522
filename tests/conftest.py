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


def _vlm_r1_defaults() -> list[str]:
    """Overrides that put base.yaml's values (VLM-R1's lr 1e-6 and beta 0.04, 20 steps x 4 prompts,
    the default scene) back over the embedded recipe of conf/rec.yaml and conf/ovd.yaml (the tiny
    Qwen3-VL's lr 1e-4, beta 0, 300 steps x 8 prompts, evaluations of 300 images): the runs of the
    tests take those task files with the test model, and check the reference model, the KL term and
    their own small step counts. The tasks themselves (data, rewards, triggers) stay as shipped."""
    from omegaconf import OmegaConf

    from conf import CONF_DIR, _flatten
    base = _flatten(OmegaConf.load(CONF_DIR / "base.yaml"))
    keys = set()
    for task in ("rec", "ovd"):
        keys |= {k for k in _flatten(OmegaConf.load(CONF_DIR / f"{task}.yaml"))
                 if k.split(".")[0] in ("learner", "trainer", "eval") or k in ("rollout.num_generations", "data.synthetic.scene")}
    return [f"{k}={base[k]}" for k in sorted(keys)]


VLM_R1_DEFAULTS = _vlm_r1_defaults()
