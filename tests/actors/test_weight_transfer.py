"""The weight sync's other paths on a real engine and learner, in one launch (on the Ray of
``shared_ray``): the worker extension driven by ``collective_rpc`` (``rollout.weight_transfer=extension``,
for vLLM builds without the weight-transfer API) carrying delta updates (``rollout.sync_delta``). The
receiving is one class (``actors.vllm_ext.Receiver``) behind either entry point; the default entry
point (vLLM's API, backend vlm_r1) with whole updates is checked on the runtime module's roles
(tests/actors/test_runtime.py)."""
import math

import pytest
import ray

import conf
from data.loaders import load_prompts
from tests.actors.test_runtime import update_and_sync

pytestmark = pytest.mark.e2e


def test_delta_sync_through_the_worker_extension_keeps_engine_and_learner_identical(tiny_model, synthetic, tmp_path,
                                                                                    shared_ray):
    """rollout.sync_delta through the extension: the first update in full, the next ones as changed
    elements (fewer bytes: at a small learning rate most bf16 weights do not move), every second in
    full; after each the engine's copy is bit-identical to the learner's (so every sync changed the
    engine's weights to the learner's) and the engine samples with the learner's policy. A replaced
    group starts over with a full update."""
    cfg = conf.resolve(conf.load([
        f"model.path={tiny_model}", f"data.synthetic.dir={synthetic}", "learner.lr=1e-5", "learner.beta=0.0",
        "rollout.dtype=bfloat16", "rollout.sync_delta=true", "rollout.sync_full_every=2", "rollout.num_generations=4",
        "rollout.weight_transfer=extension", "trainer.prompts_per_step=2", "rollout.max_new_tokens=24",
        "reward.num_workers=1", "cluster.include_dashboard=false",
        f"trainer.output_dir={tmp_path / 'run'}"]), tmp_path / "cache")
    with shared_ray(cfg, tiny_model, tmp_path / "run") as (cfg, pool, learners, _):
        engine, learner = pool.engines.actors[0], learners.actors[0]
        assert ray.get(engine.transfer_entry.remote()) == "extension"
        names = [m[0] for m in pool.meta]
        dense = sum(math.prod(shape) * 2 for _, _, shape in pool.meta)
        prompts = load_prompts(cfg.data.train_files, cfg.data.image_folders, "rec")[0][:2]
        sent, digests = [], []
        for update in range(4):
            if update == 3:
                pool.connect()  # as after a replaced engine: both sides start over
                # (asynchronous runs then resend the last synced weights, dense, to every engine)
                ray.get([learner.resend_weights.remote()] + pool.engines.call("receive_weights", pool.meta))
                assert ray.get(engine.weight_digest.remote(names)) == ray.get(learner.weight_digest.remote())
            update_and_sync(pool, learners, prompts, names=[""])  # (checksum: the model's every parameter)
            sent.append(pool.sync_bytes)
            digests.append(ray.get(engine.weight_digest.remote(names)))
            assert digests[-1] == ray.get(learner.weight_digest.remote())
        assert len(set(digests)) == len(digests)  # (and what the engine keeps of them: every sync a new copy)
        assert sent[0] == sent[2] == sent[3] == dense  # the first, every second (full_every=2), after a new group
        assert 0 < sent[1] < dense / 2, (sent, dense)
