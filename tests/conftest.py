"""Shared fixtures: a tiny model and a small synthetic dataset, built once per test session."""
import os
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
OPT_IN = ("slow", "gpu")  # markers a run takes only when its -m expression names them


def pytest_configure(config):
    """The fast tier (a ``-m`` that leaves out ``e2e``) draws fewer random cases: ``tests/budget.py``."""
    from tests import budget
    budget.FULL = "not e2e" not in " ".join((config.getoption("markexpr") or "").split())


def pytest_collection_modifyitems(config, items):
    """Deselect ``slow`` and ``gpu`` tests unless ``-m`` names them: ``pytest`` and ``pytest -m "not e2e"``
    both leave them out, ``pytest -m slow`` runs them (a default ``-m`` in addopts would be replaced
    by any ``-m`` given, and the fast tier would run the slow tests)."""
    expr = config.getoption("markexpr") or ""
    out = [m for m in OPT_IN if m not in expr]
    gone = [item for item in items if any(item.get_closest_marker(m) for m in out)]
    if gone:
        config.hook.pytest_deselected(items=gone)
        dropped = set(gone)
        items[:] = [item for item in items if item not in dropped]


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



@pytest.fixture(scope="module")
def shared_ray(tmp_path_factory):
    """One private Ray for a module's in-process launches (``trainer.roles.launch`` uses a Ray that is
    up): yields ``roles(cfg, model_path, out_dir)``, a context manager that builds the roles and
    removes them (actors and placement groups) afterwards; Ray stops at the end of the module."""
    import contextlib

    import ray

    import conf
    from trainer import cluster
    from trainer.roles import launch
    cache = tmp_path_factory.mktemp("ray-cache")
    cluster.start(conf.resolve(conf.load(["cluster.include_dashboard=false"]), cache), tmp_path_factory.mktemp("ray"))

    @contextlib.contextmanager
    def roles(cfg, model_path, out_dir):
        cfg, pool, learners, scorers = launch(cfg, model_path, out_dir)
        try:
            yield cfg, pool, learners, scorers
        finally:
            for group in (pool.engines, learners, scorers):
                group.shutdown()

    yield roles
    ray.shutdown()
