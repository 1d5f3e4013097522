"""The weight sync's other paths on a real engine and learner (the launches on the Ray of ``shared_ray``,
in processes they reuse): the worker extension driven by ``collective_rpc``
(``rollout.weight_transfer=extension``, for vLLM builds without the weight-transfer API) carrying
delta updates (``rollout.sync_delta``), and LoRA: adapters alone (vLLM serving the base plus the
adapter) or merged into the adapted layers. The receiving is one class (``actors.vllm_ext.Receiver``)
behind either entry point; the default entry point (vLLM's API, backend vlm_r1) with whole updates is
checked on the runtime module's roles (tests/actors/test_runtime.py); the main command with an adapter
synced is that module's OVD job."""
import math

import pytest
import ray
import torch

import conf
from data.loaders import load_prompts
from tests.actors.test_runtime import _gap, _items, update_and_sync

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
