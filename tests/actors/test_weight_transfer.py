"""Both entry points of the weight sync on a real engine and learner: vLLM's weight-transfer API
(backend vlm_r1, the default) and the worker extension. Whatever the entry point, the engine's
weights change with every sync and it then samples the learner's policy (its own Ray: the runtime
module keeps one up)."""
import pytest
import ray

import conf
from trainer.roles import launch
from data.loaders import load_prompts
from tests.actors.test_runtime import _gap, _items

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("transfer,extra", [("vllm", ()), ("extension", ()),
                                            ("vllm", ("rollout.sync_delta=true",))])
def test_every_sync_changes_the_engines_weights_to_the_learners(tiny_model, synthetic, tmp_path, transfer, extra):
    cfg = conf.resolve(conf.load([
        f"model.path={tiny_model}", f"data.synthetic.dir={synthetic}", "learner.lr=3e-2", "learner.beta=0.0",
        f"rollout.weight_transfer={transfer}", "rollout.num_generations=4", "trainer.prompts_per_step=2",
        "rollout.max_new_tokens=24", "reward.num_workers=1", f"trainer.output_dir={tmp_path / 'run'}", *extra]),
        tmp_path / "cache")
    try:
        cfg, pool, learners, _ = launch(cfg, tiny_model, tmp_path / "run")
        engine, learner = pool.engines.actors[0], learners.actors[0]
        entry = ray.get(engine.transfer_entry.remote())
        assert entry == ("GlooWeightTransfer" if transfer == "vllm" else "extension")
        prompts = load_prompts(cfg.data.train_files, cfg.data.image_folders, "rec")[0][:2]
        for update in range(2):
            rollouts = ray.get(engine.generate.remote(prompts))
            assert ray.get(learners.call_sharded("train_step", _items(rollouts)))[0]["grad_norm"] > 0
            stale = _items(ray.get(engine.generate.remote(prompts)))
            before = _gap(stale, ray.get(learner.logprobs.remote(stale)))
            weights_before = ray.get(engine.weight_checksum.remote(["lm_head", "layers.0.mlp"]))
            pool.sync(version=update + 1)
            assert ray.get(engine.weight_checksum.remote(["lm_head", "layers.0.mlp"])) != weights_before
            fresh = _items(ray.get(engine.generate.remote(prompts)))
            after = _gap(fresh, ray.get(learner.logprobs.remote(fresh)))
            assert after < 0.05 < before, (update, before, after)  # synced: the learner's policy; before: not
            timing = ray.get(engine.last_sync_timing.remote())
            assert timing["receive_s"] >= 0 and timing["reload_s"] > 0  # the reload happened (and was timed)
    finally:
        ray.shutdown()
