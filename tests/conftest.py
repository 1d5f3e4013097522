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


_EXIT_STATUS: list = []


def pytest_sessionfinish(session, exitstatus):
    _EXIT_STATUS[:] = [int(exitstatus)]


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Once pytest has reported and written its files, leave with its exit status and without the
    interpreter's teardown. The suite's one process has held vLLM, DeepSpeed's gloo process groups and
    several Ray sessions; on 2026-12-05 one full run of 574 passed tests then died in that teardown
    (SIGSEGV, exit 139, which fails CI however the tests went) and the next run of the same commit did
    not: native destructors racing at interpreter exit, not a result of any test. The project's own
    processes are checked to exit cleanly where that is the point (every ``orchestrator.py`` a test
    runs as a command must exit 0). ``VLM_R1_TEST_TEARDOWN=1`` keeps the teardown."""
    if _EXIT_STATUS and not os.environ.get("VLM_R1_TEST_TEARDOWN"):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS[0])


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


SESSION: list = []  # the Session whose kept engine and learner the next module's launches may take


@pytest.fixture(scope="module")
def shared_ray(request, tmp_path_factory):
    """One private Ray for the in-process launches (as ``trainer.roles.launch`` would build them):
    yields ``roles(cfg, model_path, out_dir)``, a context manager that builds the roles and removes
    them afterwards -- all but the engine and the learner rank, which a ``trainer.session.Session``
    keeps for the next launch to build afresh in the same processes (a vLLM ``LLM`` in a process that
    has imported vLLM starts in about 3 s instead of 15; ``roles.release()`` shuts them down, for a
    test that places actors of its own). A module that asks starts the Ray, and keeps it (and those
    processes) for the module run right after it if that one asks too (a start costs seconds of CPU on
    2 cores); otherwise it stops: an idle Ray costs CPU too, and a module that starts clusters of its
    own (``tests/trainer/test_cluster_joined.py``) must not meet it."""
    import contextlib

    import ray

    import conf
    from trainer import cluster, roles as roles_mod
    from trainer.session import Session
    if not ray.is_initialized():
        SESSION[:] = [Session()]  # (the processes of an earlier Ray are gone with it)
        cluster.start(conf.resolve(conf.load(["cluster.include_dashboard=false"]), tmp_path_factory.mktemp("ray-cache")),
                      tmp_path_factory.mktemp("ray"))
    session = SESSION[0]

    @contextlib.contextmanager
    def roles(cfg, model_path, out_dir):
        built = roles_mod.launch(cfg, model_path, out_dir, session=session)
        ok = False
        try:
            yield built
            ok = True
        finally:
            session.end_run(failed=not ok)

    roles.release = session.release
    roles.session = session
    yield roles
    if not _ray_needed_next(request):
        session.release()
        ray.shutdown()
