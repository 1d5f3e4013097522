"""Delta weight sync on a real engine and learner (its own Ray: the runtime module keeps one up)."""
import math

import pytest
import ray

import conf
from trainer.roles import launch
from data.loaders import load_prompts
from tests.actors.test_runtime import _gap, _items

pytestmark = pytest.mark.e2e


def test_delta_sync_keeps_engine_and_learner_weights_identical(tiny_model, synthetic, tmp_path):
    """rollout.sync_delta with a real engine and learner: the first update in full, the next ones
    as changed elements (fewer bytes: at a small learning rate most bf16 weights do not move), every
    second in full; after each the engine's copy is bit-identical to the learner's and the engine
    samples with the learner's policy. A replaced group starts over with a full update."""
    cfg = conf.resolve(conf.load([
        f"model.path={tiny_model}", f"data.synthetic.dir={synthetic}", "learner.lr=1e-5", "learner.beta=0.0",
        "rollout.dtype=bfloat16", "rollout.sync_delta=true", "rollout.sync_full_every=2", "rollout.num_generations=4",
        "trainer.prompts_per_step=2", "rollout.max_new_tokens=24", "reward.num_workers=1",
        "cluster.include_dashboard=false",
        f"trainer.output_dir={tmp_path / 'run'}"]), tmp_path / "cache")
    try:
        cfg, pool, learners, _ = launch(cfg, tiny_model, tmp_path / "run")
        engine, learner = pool.engines.actors[0], learners.actors[0]
        names = [m[0] for m in pool.meta]
        dense = sum(math.prod(shape) * 2 for _, _, shape in pool.meta)
        prompts = load_prompts(cfg.data.train_files, cfg.data.image_folders, "rec")[0][:2]
        sent = []
        for update in range(4):
            if update == 3:
                pool.connect()  # as after a replaced engine: both sides start over
                # (asynchronous runs then resend the last synced weights, dense, to every engine)
                ray.get([learner.resend_weights.remote()] + pool.engines.call("receive_weights", pool.meta))
                assert ray.get(engine.weight_digest.remote(names)) == ray.get(learner.weight_digest.remote())
            rollouts = ray.get(engine.generate.remote(prompts))
            assert ray.get(learners.call_sharded("train_step", _items(rollouts)))[0]["grad_norm"] > 0
            pool.sync(version=update + 1)
            sent.append(pool.sync_bytes)
            assert ray.get(engine.weight_digest.remote(names)) == ray.get(learner.weight_digest.remote())
            fresh = ray.get(engine.generate.remote(prompts))
            assert _gap(_items(fresh), ray.get(learner.logprobs.remote(_items(fresh)))) < 0.05
        assert sent[0] == sent[2] == sent[3] == dense  # the first, every second (full_every=2), after a new group
        assert 0 < sent[1] < dense / 2, (sent, dense)
    finally:
        ray.shutdown()
