"""Which kept process a ``trainer.session.Session`` may give the next run: one whose placement
(actor count, Ray resources, environment with threads) is the one the run would start it with."""
import pathlib

import conf
from trainer import roles
from trainer.session import _key


def _cfg(*over):
    return conf.resolve(conf.load(["trainer.max_staleness=0", "cluster.num_cpus=2", *over]), pathlib.Path("/CACHE"))


def test_a_run_gets_the_kept_process_only_with_the_same_placement():
    env = {"PYTHONPATH": "/repo"}
    base = _key(roles.engine_placement(_cfg(), env, gpu=False))
    assert _key(roles.engine_placement(_cfg("learner.lr=3e-4", "rollout.temperature=0.7"), env, gpu=False)) == base
    for over in ("rollout.cpu_threads=1", "rollout.num_engines=2", "rollout.cpus_per_engine=2",
                 "rollout.resources={engine_node: 1}", "trainer.max_staleness=1"):
        assert _key(roles.engine_placement(_cfg(over), env, gpu=False)) != base, over
    assert _key(roles.engine_placement(_cfg(), {"PYTHONPATH": "/other"}, gpu=False)) != base
    n, bundle, actor_env = roles.engine_placement(_cfg(), env, gpu=False)
    assert (n, bundle["CPU"], bundle["GPU"], actor_env["PYTHONPATH"]) == (1, 1, 0, "/repo")
    assert actor_env["OMP_NUM_THREADS"] == "2"  # synchronous on 2 cores: the engine takes both


def test_learner_placement_follows_the_learner_section():
    env = {}
    base = _key(roles.learner_placement(_cfg(), env, gpu=False))
    assert _key(roles.learner_placement(_cfg("rollout.cpu_threads=1"), env, gpu=False)) == base
    assert _key(roles.learner_placement(_cfg("learner.cpu_threads=1"), env, gpu=False)) != base
    assert _key(roles.learner_placement(_cfg("learner.world_size=2"), env, gpu=False)) != base
    assert roles.learner_placement(_cfg(), env, gpu=True)[1]["GPU"] == 0  # gpus_per_rank: 0 by default
    assert roles.learner_placement(_cfg("learner.gpus_per_rank=1"), env, gpu=True)[1]["GPU"] == 1
    assert roles.learner_placement(_cfg("learner.gpus_per_rank=1"), env, gpu=False)[1]["GPU"] == 0
