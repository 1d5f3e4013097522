"""Every family with a tiny build, on the real engines: the learner reproduces the engine's
tokens and log-probs, a weight sync carries the update, and a run trains and evaluates.
(Qwen2.5-VL, the default, is covered by tests/learner, tests/actors and tests/trainer; Qwen3-VL's main
command is tests/actors/test_runtime.py's OVD job.)"""
import json
import os
import pathlib
import subprocess
import sys

import pytest
import ray

import conf

pytestmark = pytest.mark.e2e
REPO = pathlib.Path(__file__).resolve().parents[2]
OTHERS = ["qwen2_vl", "qwen3_vl", "glm4v", "internvl"]


@pytest.fixture(scope="module", params=OTHERS)
def family_model(request, tmp_path_factory) -> tuple[str, str]:
    from data.tiny_model import build
    return request.param, str(build(tmp_path_factory.mktemp(request.param) / "tiny", seed=0, family=request.param))


def test_teacher_forced_logprobs_equal_the_generating_decode(family_model, synthetic):
    from tests.learner.test_batch import test_teacher_forced_logprobs_equal_the_generating_decode as check
    check(family_model[1], synthetic)


def test_shared_prompt_forward_equals_the_unshared_one(family_model, synthetic):
    from models import FAMILIES
    from tests.learner import test_learner as tl
    if FAMILIES[family_model[0]].rope_index is None:  # 1D positions: every completion is scored unshared
        lr = tl._learner(family_model[1], 2, 6, **{"learner.prefix_sharing": "true"})
        items = tl._grouped_items(family_model[1], synthetic)
        assert all("rows" not in b for b in lr._batches(items)) and lr.train_step(items)["grad_norm"] > 0
        return
    tl.test_shared_prompt_forward_equals_the_unshared_one_in_logprobs_and_gradients(family_model[1], synthetic, 2)


def test_lora_frozen_tower_and_zero3_per_family(family_model, synthetic):
    """LoRA adapts the language model only (the family's vision tower by name), a frozen tower is
    neither trained nor sent, and ZeRO-3 trains."""
    from models import FAMILIES
    from tests.learner import test_learner as tl
    name, path = family_model
    tower = FAMILIES[name].vision_prefix
    items = tl._items(path, synthetic)
    lora = tl._learner(path, 4, **{"learner.lora.r": 4, "learner.lora.alpha": 8})
    adapted = [n for n, p in lora.engine.module.named_parameters() if p.requires_grad]
    assert adapted and all("lora_" in n and tower not in n for n in adapted)
    assert lora.train_step(items)["grad_norm"] > 0
    frozen = tl._learner(path, 4, **{"model.freeze_vision_tower": "true", "learner.zero_stage": 3})
    assert not any(tower in n for n, _, _ in frozen.weight_meta())
    before = frozen.param_checksum([tower])
    assert frozen.train_step(items)["grad_norm"] > 0 and frozen.param_checksum([tower]) == before


def test_engine_tokens_and_logprobs_equal_the_learners_before_and_after_a_sync(family_model, synthetic, tmp_path,
                                                                             shared_ray):
    from transformers import AutoProcessor

    from data.loaders import load_prompts
    from data.prompts import prompt_inputs
    from models import FAMILIES, answer_frame
    from tests.actors.test_runtime import _gap, _items
    name, path = family_model
    cfg = conf.resolve(conf.load([
        f"model.path={path}", f"data.synthetic.dir={synthetic}", "learner.lr=3e-2", "learner.beta=0.0",
        "rollout.num_generations=4", "trainer.prompts_per_step=2", "rollout.max_new_tokens=24",
        "reward.num_workers=1", "cluster.include_dashboard=false", f"trainer.output_dir={tmp_path / 'run'}"]),
        tmp_path / "cache")
    with shared_ray(cfg, path, tmp_path / "run") as (cfg, pool, learners, _):
        engine, learner = pool.engines.actors[0], learners.actors[0]
        prompts = load_prompts(cfg.data.train_files, cfg.data.image_folders, "rec")[0][:2]
        first = ray.get(engine.generate.remote(prompts))
        proc = AutoProcessor.from_pretrained(path)
        for r in first:
            ids = prompt_inputs(proc, r.prompt.question, r.prompt.images, "rec")["input_ids"][0]
            assert ids.tolist() == r.prompt_token_ids  # the learner's tokenization == the engine's
            assert r.input_sizes[0] == answer_frame(FAMILIES[name].coords, proc.image_processor,
                                                    *r.prompt.image_sizes[0])
        assert _gap(_items(first), ray.get(learner.logprobs.remote(_items(first)))) < 0.05
        meta = ray.get(learner.weight_meta.remote(ray.get(engine.info.remote())["dtype"]))
        metrics = ray.get(learners.call_sharded("train_step", _items(first)))[0]
        assert metrics["grad_norm"] > 0
        stale = ray.get(engine.generate.remote(prompts))  # the engine still has the old weights
        stale_gap = _gap(_items(stale), ray.get(learner.logprobs.remote(_items(stale))))
        assert ray.get(learners.call("broadcast_weights") + pool.engines.call("receive_weights", meta))[-1] == len(meta)
        fresh = ray.get(engine.generate.remote(prompts))
        fresh_gap = _gap(_items(fresh), ray.get(learner.logprobs.remote(_items(fresh))))
        assert fresh_gap < 0.05 < stale_gap, (fresh_gap, stale_gap)  # synced: engine == learner


@pytest.mark.slow
@pytest.mark.parametrize("slug", ["qwen2-vl", "glm4v", "internvl"])
def test_a_builtin_family_trains_and_evaluates_from_the_main_command(slug, synthetic, tmp_path):
    """``python orchestrator.py conf=rec model.path=builtin:tiny-<family>-random``: built into the
    cache, two GRPO steps with a sync between them, an evaluation before and after; the exported
    checkpoint then evaluates on its own (``mode=eval``, with only validation data given). (A random model earns no reward, so its
    updates are zero: the update itself is tested above.) Qwen3-VL, the quickstart's family, runs the
    main command in every suite: tests/actors/test_runtime.py's OVD job and its export's ``mode=eval``."""
    out = tmp_path / "run"
    env = {**os.environ, "VLM_R1_RAY_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, str(REPO / "orchestrator.py"), "conf=task/rec", f"model.path=builtin:tiny-{slug}-random",
           f"data.synthetic.dir={synthetic}", f"trainer.output_dir={out}", "cluster.include_dashboard=false",
           "trainer.max_steps=2", "trainer.prompts_per_step=2", "rollout.num_generations=4",
           "rollout.max_new_tokens=24", "trainer.eval_steps=2", "eval.train_samples=8", "wandb.mode=disabled"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert f"building the embedded tiny {slug}" in proc.stdout
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    steps = [r for r in rows if "reward/mean" in r]
    evals = [r for r in rows if "eval/accuracy" in r]
    assert [r["step"] for r in steps] == [1, 2] and [r["step"] for r in evals] == [0, 2]
    assert all(r["items"] == 8 for r in steps)
    assert steps[1]["engine_logp_abs_diff"] < 0.05  # the engine sampled step 2 with step 1's weights
    assert json.loads((out / "summary.json").read_text())["steps"] == 2
    from tests.actors.test_runtime import export_evaluates_alone
    export_evaluates_alone(tmp_path, synthetic, out / "checkpoints" / "step_000002" / "hf", "rec")


def test_lora_adapter_sync_per_family(family_model, synthetic, tmp_path, shared_ray):
    """vLLM serves the family's base plus the synced adapter, and samples the learner's policy."""
    from tests.actors.test_weight_transfer import _run
    _, path = family_model
    sent, gaps, meta = _run(path, synthetic, tmp_path, "adapter", updates=1, roles=shared_ray)
    assert meta and all(".lora_A." in n or ".lora_B." in n for n, _, _ in meta)
    (before, after), = gaps
    assert after < 0.05 < before, gaps
