"""The second entry point of the weight sync on a real engine and learner: the worker extension
driven by ``collective_rpc`` (``rollout.weight_transfer=extension``, for vLLM builds without the
weight-transfer API). Whatever the entry point, the engine's weights change with every sync and it
then samples the learner's policy; the default entry point (vLLM's API, backend vlm_r1) is checked
the same way on the runtime module's roles (tests/actors/test_runtime.py), delta sync in
tests/actors/test_delta_sync.py. Its own Ray: the runtime module keeps one up."""
import pytest
import ray

import conf
from trainer.roles import launch
from data.loaders import load_prompts
from tests.actors.test_runtime import every_sync_changes_the_engines_weights_to_the_learners

pytestmark = pytest.mark.e2e


def test_every_sync_through_the_worker_extension_changes_the_engines_weights_to_the_learners(tiny_model, synthetic,
                                                                                            tmp_path):
    cfg = conf.resolve(conf.load([
        f"model.path={tiny_model}", f"data.synthetic.dir={synthetic}", "learner.lr=3e-2", "learner.beta=0.0",
        "rollout.weight_transfer=extension", "rollout.num_generations=4", "trainer.prompts_per_step=2",
        "rollout.max_new_tokens=24", "reward.num_workers=1", "cluster.include_dashboard=false",
        f"trainer.output_dir={tmp_path / 'run'}"]), tmp_path / "cache")
    try:
        cfg, pool, learners, _ = launch(cfg, tiny_model, tmp_path / "run")
        assert ray.get(pool.engines.actors[0].transfer_entry.remote()) == "extension"
        prompts = load_prompts(cfg.data.train_files, cfg.data.image_folders, "rec")[0][:2]
        every_sync_changes_the_engines_weights_to_the_learners(pool, learners, prompts)
    finally:
        ray.shutdown()
