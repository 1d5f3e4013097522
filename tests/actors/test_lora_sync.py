"""LoRA adapter sync on a real engine and learner (one Ray for the module's launches: ``shared_ray``); the
main command with an adapter synced is tests/actors/test_runtime.py's OVD job."""
import math

import pytest
import ray
import torch

import conf
from data.loaders import load_prompts
from tests.actors.test_runtime import _gap, _items

pytestmark = pytest.mark.e2e


def _run(tiny_model, synthetic, tmp_path, sync: str, updates: int = 2, extra=(), roles=None):
    """(bytes sent per sync, [(gap before the sync, gap after it)] per update, tensor names sent);
    ``roles``: the module's ``shared_ray``."""
    cfg = conf.resolve(conf.load([*extra,
        f"model.path={tiny_model}", f"data.synthetic.dir={synthetic}", "learner.lr=2e-2", "learner.beta=0.0",
        "learner.lora.r=8", "learner.lora.alpha=16", "learner.lora.dropout=0.0", f"learner.lora.sync={sync}",
        "learner.zero_stage=2", "rollout.num_generations=4", "trainer.prompts_per_step=2",
        "rollout.max_new_tokens=24", "reward.num_workers=1", "cluster.include_dashboard=false",
        f"trainer.output_dir={tmp_path / 'run'}"]), tmp_path / "cache")
    with roles(cfg, tiny_model, tmp_path / "run") as (cfg, pool, learners, _):
        engine, learner = pool.engines.actors[0], learners.actors[0]
        prompts = load_prompts(cfg.data.train_files, cfg.data.image_folders, "rec")[0][:2]
        sent, gaps = [], []
        for update in range(updates):
            rollouts = ray.get(engine.generate.remote(prompts))
            assert ray.get(learners.call_sharded("train_step", _items(rollouts)))[0]["grad_norm"] > 0
            stale = _items(ray.get(engine.generate.remote(prompts)))  # the engine before the sync
            before = _gap(stale, ray.get(learner.logprobs.remote(stale)))
            pool.sync(version=update + 1)
            sent.append(pool.sync_bytes)
            fresh = _items(ray.get(engine.generate.remote(prompts)))
            gaps.append((before, _gap(fresh, ray.get(learner.logprobs.remote(fresh)))))
        return sent, gaps, pool.meta


def _bytes(meta) -> int:
    return sum(math.prod(shape) * getattr(torch, dtype).itemsize for _, dtype, shape in meta)


def test_adapter_sync_sends_only_adapters_and_the_engine_samples_the_learners_policy(tiny_model, synthetic, tmp_path,
                                                                                    shared_ray):
    """learner.lora.sync=adapter: each sync moves only lora_A / lora_B (the first their bytes exactly;
    with rollout.sync_delta the second as changed elements, or whole where that is smaller), and after
    each the engine (frozen base + vLLM LoRA) samples what the learner's policy scores; before the sync
    it did not (so the adapter, not the base, carries the update)."""
    sent, gaps, meta = _run(tiny_model, synthetic, tmp_path / "adapter", "adapter", roles=shared_ray,
                            extra=("rollout.sync_delta=true", "rollout.sync_full_every=10"))
    assert meta and all(".lora_A." in n or ".lora_B." in n for n, _, _ in meta)
    assert all("visual" not in n and ".default." not in n for n, _, _ in meta)
    assert sent[0] == _bytes(meta) and 0 < sent[1] <= sent[0] + 8 * len(meta), sent  # (+ the delta header)
    for before, after in gaps:
        assert after < 0.05, gaps  # the engine's log-probs are the learner's
        assert before > 4 * after and before > 0.02, gaps  # ...and were not before the adapter arrived


def test_merged_sync_sends_base_plus_delta_of_the_adapted_layers(tiny_model, synthetic, tmp_path, shared_ray):
    """learner.lora.sync=merged (models vLLM cannot serve with LoRA): whole adapted layers, more bytes."""
    sent, gaps, meta = _run(tiny_model, synthetic, tmp_path / "merged", "merged", updates=1, roles=shared_ray)
    assert meta and not any("lora_" in n for n, _, _ in meta)
    assert sent[0] == _bytes(meta)
    assert gaps[0][1] < 0.05, gaps
