"""Reward workers that die or hang mid-batch: the batch is rescored, every completion exactly once.

The worker subclasses here only inject faults (a slow chunk, a hang, a crash); scoring is real."""
import os
import pathlib
import signal
import time

import pytest
import ray

from actors.group import ActorGroup
from actors.reward_worker import RewardWorker, ScorerPool
from samples import Prompt, Rollout

pytestmark = pytest.mark.e2e
REPO = pathlib.Path(__file__).resolve().parents[2]
FUNCS = {"rec_format": 1.0, "rec_iou": 1.0}


class SlowWorker(RewardWorker):
    def score(self, tasks, rules=None):
        time.sleep(1.5)  # a long chunk, so the test can kill the worker in the middle of it
        return super().score(tasks, rules)


def _first(marker: str) -> bool:
    """True for the one call, across every worker process, that creates ``marker``: an exclusive
    create, so two workers starting their first chunks at the same moment cannot both win (an
    exists-then-touch check let both hang, and the pool then rightly replaced both)."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


class HangOnceWorker(RewardWorker):
    def score(self, tasks, rules=None):
        if _first(os.environ["HANG_MARKER"]):
            time.sleep(3600)  # the first chunk ever hangs
        return super().score(tasks, rules)


class SlowReplacementWorker(RewardWorker):
    """The first chunk ever hangs, and every replacement takes longer to start than a chunk's timeout."""

    def __init__(self, *args, **kwargs):
        marker = pathlib.Path(os.environ["HANG_MARKER"] + "-slow-start")
        if marker.exists():
            time.sleep(6)  # a replacement on a loaded machine
        super().__init__(*args, **kwargs)

    def score(self, tasks, rules=None):
        if _first(os.environ["HANG_MARKER"] + "-slow-start"):
            time.sleep(3600)
        return super().score(tasks, rules)


class CrashWorker(RewardWorker):
    def score(self, tasks, rules=None):
        os._exit(1)


@pytest.fixture(scope="module", autouse=True)
def local_ray(tmp_path_factory):
    marker = tmp_path_factory.mktemp("marker") / "hung"
    # ray.init writes the auth mode it picked (token) into this process's environment, where every later
    # orchestrator run of the suite would inherit it: set it as the project's private clusters do, and
    # put it back afterwards
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_AUTH_MODE", os.environ.get("RAY_AUTH_MODE", "disabled"))
        ray.init(num_cpus=4, include_dashboard=False, _temp_dir=f"/tmp/vr1f-{os.getpid()}", logging_level="ERROR",
                 runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "HANG_MARKER": str(marker)}})
        yield
        ray.shutdown()


def _rollouts(n=24):
    out = []
    for i in range(n):
        p = Prompt(f"p{i}", (), (), "find it", "[10, 10, 50, 60]", "rec")
        text = f'<think>x</think><answer>{{"bbox_2d": [10, 10, 50, {50 + i}]}}</answer>'
        out.append(Rollout(p, 0, [1], [2], text, "stop", [0.0], ()))
    return out


def _check(scored, rollouts):
    assert sorted(scored) == sorted(r.key for r in rollouts)  # every completion, exactly once
    # [10,10,50,50+i] vs [10,10,50,60]: the right value, not a placeholder, whichever worker scored it
    assert scored[("p0", 0)]["values"]["rec_iou"] == pytest.approx(1600 / 2000)
    assert scored[("p10", 0)]["total"] == pytest.approx(2.0)


def test_worker_killed_mid_batch_is_replaced_and_its_chunk_rescored():
    group = ActorGroup(SlowWorker, 2, {"CPU": 0.5}, "reward-kill", args=(FUNCS,))
    old_pid = ray.get(group.actors[0].pid.remote())
    pool = ScorerPool(group, chunk=6, timeout_s=60)
    rollouts = _rollouts()
    pool.submit(rollouts)  # 4 chunks: two per worker
    time.sleep(0.5)
    os.kill(old_pid, signal.SIGKILL)
    scored, _ = pool.collect()
    _check(scored, rollouts)
    assert pool.recovered >= 1 and group.replacements >= 1
    assert ray.get(group.actors[0].pid.remote()) != old_pid  # a fresh worker took its place
    group.shutdown()


def test_hung_worker_is_treated_as_dead():
    group = ActorGroup(HangOnceWorker, 2, {"CPU": 0.5}, "reward-hang", args=(FUNCS,))
    ray.get([a.pid.remote() for a in group.actors])  # both up: the timeout measures scoring, not a slow start
    # 5 s: the healthy worker must score a chunk (milliseconds of work) within it on a loaded 2-core machine
    pool = ScorerPool(group, chunk=6, timeout_s=5)  # 4 chunks: two queued on each worker
    rollouts = _rollouts()
    t0 = time.monotonic()
    pool.submit(rollouts)
    scored, _ = pool.collect()
    _check(scored, rollouts)
    # both chunks queued on the hung worker expire together: one replacement, both rescored
    assert group.replacements == 1 and pool.recovered == 2 and time.monotonic() - t0 < 60
    group.shutdown()


def test_a_slow_starting_replacement_is_not_taken_for_hung():
    group = ActorGroup(SlowReplacementWorker, 2, {"CPU": 0.5}, "reward-slowstart", args=(FUNCS,))
    ray.get([a.pid.remote() for a in group.actors])
    pool = ScorerPool(group, chunk=6, timeout_s=3)  # the replacement needs 6 s to come up
    rollouts = _rollouts()
    pool.submit(rollouts)
    scored, _ = pool.collect()
    _check(scored, rollouts)
    # the replacement's clock starts when it is up, and chunks queued behind others are not charged
    # for the wait: one replacement, the hung worker's two chunks rescored once each
    assert group.replacements == 1 and pool.recovered == 2
    group.shutdown()


def test_a_chunk_that_kills_every_worker_stops_with_a_clear_error():
    group = ActorGroup(CrashWorker, 2, {"CPU": 0.5}, "reward-crash", args=(FUNCS,))
    pool = ScorerPool(group, chunk=24, timeout_s=60, max_attempts=3)
    pool.submit(_rollouts())
    with pytest.raises(RuntimeError, match="failed 3 times .*worker died"):
        pool.collect()
    group.shutdown()


class StuckEngine:
    """An engine whose start-up never ends (a model load stuck on a hung file system)."""

    def ready(self):
        time.sleep(3600)


class Rank0:
    def address(self):
        return "127.0.0.1", 0


def test_an_engine_stuck_in_start_up_is_a_hung_role_not_a_wait_for_ever():
    """Every driver wait on a role is bounded: an engine that never finishes starting up is
    ``RoleHung`` past its group's start-up timeout (``cluster.startup_timeout_s``), although its
    call timeout (``rollout.timeout_s``) is longer."""
    from actors.engine_pool import EnginePool
    from actors.group import RoleHung
    engines = ActorGroup(StuckEngine, 1, {"CPU": 0.1}, "rollout-stuck", call_timeout_s=600, startup_timeout_s=2)
    learners = ActorGroup(Rank0, 1, {"CPU": 0.1}, "learner-ok", call_timeout_s=600, startup_timeout_s=2)
    t0 = time.monotonic()
    with pytest.raises(RoleHung, match="gave no answer to start-up within 2s") as e:
        EnginePool(engines, learners, meta=[]).connect()
    assert e.value.role == "rollout-stuck" and time.monotonic() - t0 < 30
    engines.shutdown()
    learners.shutdown()


def test_a_learner_restart_shuts_down_every_group_but_the_kept_ones():
    """``shutdown_groups(keep=...)`` (the driver's learner restart): the failed attempt's groups go, a
    hung actor among them, and their placement groups with them; the kept groups go on answering."""
    from actors.group import shutdown_groups
    from ray.util.placement_group import placement_group_table
    kept = ActorGroup(Rank0, 1, {"CPU": 0.1}, "rollout-kept")
    hung = ActorGroup(StuckEngine, 1, {"CPU": 0.1}, "learner-hung")
    hung.actors[0].ready.remote()  # busy for an hour
    assert shutdown_groups(keep=[kept]) >= 1  # (and any group an earlier test's Ray session left)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(hung.actors[0].ready.remote(), timeout=30)
    assert ray.get(kept.actors[0].address.remote(), timeout=30) == ("127.0.0.1", 0)
    states = {pg["placement_group_id"]: pg["state"] for pg in placement_group_table().values()}
    assert states[hung.pg.id.hex()] == "REMOVED" and states[kept.pg.id.hex()] == "CREATED"
    kept.shutdown()
