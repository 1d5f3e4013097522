"""An experiment's stages: each one ``orchestrator.py`` command run into its own folder, skipped when
its results exist (so an interrupted experiment continues), and the readers of what a run wrote.
Shared by ``bench.learning``, ``bench.testbed``, ``bench.hack_trigger`` and ``bench.dynamic_sampling``.

Inside ``one_process(out)`` the stages run in this process, one after another on one Ray
(``trainer.session.Session``: each run's engine and learner processes are built afresh for the next
in the same process, a few seconds instead of a new ``orchestrator.py``'s ~35); outside it, each is
an ``orchestrator.py`` process of its own. Either way a stage's output goes to ``<out>/<name>.log``.
"""
from __future__ import annotations

import contextlib
import json
import pathlib
import shutil
import subprocess
import sys
import time
import traceback

REPO = pathlib.Path(__file__).resolve().parents[1]
QUIET = ["trainer.report=false", "wandb.mode=disabled", "cluster.include_dashboard=false"]


def prepare_out(out: str, fresh: bool) -> pathlib.Path:
    """An experiment's output folder (under the repo), emptied first with ``fresh``; the repo is put
    on the import path, as the stages run ``orchestrator.py`` from it."""
    path = (REPO / out).resolve()
    if fresh:
        shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    return path


_SESSION: list = []  # the Session of the enclosing one_process(), if any


@contextlib.contextmanager
def one_process(out: pathlib.Path, enabled: bool = True):
    """Run the stages started inside in this process on one Ray (``enabled=False``: each in an
    ``orchestrator.py`` process of its own, as before). Ray's files go to ``out/ray``."""
    if not enabled:  # (inside another one_process too: these stages are processes of their own)
        outer = _SESSION[:]
        _SESSION.clear()
        try:
            yield None
        finally:
            _SESSION[:] = outer
        return
    from trainer.session import Session
    with Session(out) as session:
        _SESSION[:] = [session]
        try:
            yield session
        finally:
            _SESSION.clear()


def _run_here(argv: list[str], f) -> int:
    """``orchestrator.main(argv)`` in the current ``one_process`` session, its output into ``f``;
    returns its exit code (a traceback goes to ``f``)."""
    import orchestrator
    with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        try:
            orchestrator.main(argv, session=_SESSION[0])
            return 0
        except SystemExit as e:  # a user error (exit 2) or a run that stopped itself
            if not isinstance(e.code, int) and e.code is not None:
                print(e.code)
            return e.code if isinstance(e.code, int) else int(e.code is not None)
        except Exception:  # noqa: BLE001 - the stage failed: the experiment stops with its log
            traceback.print_exc()
            return 1


def run_stage(name: str, out: pathlib.Path, overrides: list[str], done_file: str, log: list) -> pathlib.Path:
    """``orchestrator.py overrides`` into ``out/name`` unless ``done_file`` exists there already (in
    this process inside ``one_process``)."""
    run_dir = out / name
    if (run_dir / done_file).exists():
        print(f"[{name}] done already ({run_dir / done_file})", flush=True)
        return run_dir
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, "orchestrator.py", *overrides, f"trainer.output_dir={run_dir}", *QUIET]
    print(f"[{name}] {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    (out / name).parent.mkdir(parents=True, exist_ok=True)
    with open(out / f"{name}.log", "w") as f:
        if _SESSION:
            code = _run_here(cmd[2:], f)
        else:
            code = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT).returncode
    if code != 0 or not (run_dir / done_file).exists():
        raise SystemExit(f"[{name}] failed (exit {code}); see {out / f'{name}.log'}")
    log.append({"stage": name, "seconds": round(time.perf_counter() - t0, 1)})
    print(f"[{name}] {log[-1]['seconds']} s", flush=True)
    return run_dir


def eval_records(path: pathlib.Path) -> list[dict]:
    return json.loads(path.read_text())["records"]


def rows_of(run_dir: pathlib.Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


def checkpoint_hf(run_dir: pathlib.Path, step: int) -> pathlib.Path:
    return run_dir / "checkpoints" / f"step_{step:06d}" / "hf"
