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



def _ray_needed_next(request) -> bool:
    """Whether the module run right after the requesting one uses ``shared_ray`` too."""
    items, module = request.session.items, request.node.nodeid.split("::")[0]
    last = max(i for i, item in enumerate(items) if item.nodeid.split("::")[0] == module)
    return last + 1 < len(items) and "shared_ray" in getattr(items[last + 1], "fixturenames", ())


KEPT: dict = {}  # the groups the last launch left up: {"engines": (key, group), "learners": (key, group)}


@pytest.fixture(scope="module")
def shared_ray(request, tmp_path_factory):
    """One private Ray for the in-process launches (as ``trainer.roles.launch`` would build them):
    yields ``roles(cfg, model_path, out_dir)``, a context manager that builds the roles and removes
    them (actors and placement groups) afterwards -- all but the engine and the learner rank, which
    the next launch builds afresh in the same processes (tests/reuse.py: a vLLM ``LLM`` in a process
    that has imported vLLM starts in about 3 s instead of 15; ``roles.release()`` shuts them down, for
    a test that places actors of its own). A module that asks starts the Ray, and keeps it (and those
    processes) for the module run right after it if that one asks too (a start costs seconds of CPU on
    2 cores); otherwise it stops: an idle Ray costs CPU too, and a module that starts clusters of its
    own (``tests/trainer/test_cluster_joined.py``) must not meet it."""
    import contextlib

    import ray

    import conf
    from actors.group import _OPEN
    from tests.reuse import ReusableEngine, ReusableLearner, group_keys
    from trainer import cluster, roles as roles_mod
    if not ray.is_initialized():
        KEPT.clear()  # (the processes of an earlier Ray are gone with it)
        cluster.start(conf.resolve(conf.load(["cluster.include_dashboard=false"]), tmp_path_factory.mktemp("ray-cache")),
                      tmp_path_factory.mktemp("ray"))

    def kept(role: str, key: tuple):
        """The group of ``role`` the last launch left, if this launch can use it (else it is shut down)."""
        old_key, group = KEPT.pop(role, (None, None))
        if group is not None and (old_key != key or not any(g is group for g in _OPEN)):
            group.shutdown()
            group = None
        return group

    @contextlib.contextmanager
    def roles(cfg, model_path, out_dir):
        env = cluster.actor_env(cfg)
        cfg, _ = conf.resolve_auto(cfg, cluster.has_gpu())
        keys = group_keys(cfg)
        engines, learners = kept("engines", keys[0]), kept("learners", keys[1])
        if engines is not None:
            engines.call_timeout_s = cfg.rollout.timeout_s  # (the rest of what the group carries: the key)
            engines.get(engines.actors[0].reinit.remote(index=0, **roles_mod.engine_kwargs(cfg, model_path)),
                        "reinit", startup=True)
        if learners is not None:
            learners.call_timeout_s = cfg.learner.timeout_s
            kwargs = roles_mod.learner_kwargs(cfg, model_path, roles_mod.items_per_rank(cfg))
            learners.get(learners.actors[0].reinit.remote(rank=0, **kwargs), "reinit", startup=True)
        with pytest.MonkeyPatch.context() as patch:  # (new groups: of the classes that can be reused)
            patch.setattr(roles_mod, "RolloutEngine", ReusableEngine)
            patch.setattr(roles_mod, "Learner", ReusableLearner)
            pool, learners, scorers = roles_mod.create_roles(cfg, model_path, env, engines=engines, learners=learners)
        try:
            yield cfg, pool, learners, scorers
        finally:
            scorers.shutdown()
            for role, key, group in (("engines", keys[0], pool.engines), ("learners", keys[1], learners)):
                if len(group.actors) == 1:
                    KEPT[role] = (key, group)
                else:
                    group.shutdown()

    def release():
        """Shut the kept processes down: for a test that places actors of its own on this Ray."""
        for _, group in KEPT.values():
            group.shutdown()
        KEPT.clear()

    roles.release = release
    yield roles
    if not _ray_needed_next(request):
        release()
        ray.shutdown()
