"""The rollout engine on its own (vLLM in this process): seeded sampling over a batch whose
prefills cannot all fit in one scheduler step."""
import os

import pytest

import conf

pytestmark = pytest.mark.e2e


def test_seeded_sampling_survives_prefills_spread_over_scheduler_steps(tiny_model, synthetic):
    """Regression: with chunked prefill, a prompt split across steps made vLLM rewind its seeded
    CPU generator ("RuntimeError: CPU Generator does not use offset") and killed the run. Here
    ~100 prompts of ~90 tokens (more than one step's 4096-token budget) sample with per-request seeds."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from actors.rollout import RolloutEngine
    from data.loaders import load_prompts
    rollout = conf.OmegaConf.to_container(conf.load(["rollout.max_new_tokens=4", "rollout.num_generations=2"]).rollout)
    engine = RolloutEngine(tiny_model, rollout, seed=0)
    prompts, _ = load_prompts(str(synthetic / "rec_train.jsonl"), str(synthetic), "rec")
    batch = (prompts * 2)[:100]
    n_tokens = sum(len(r.prompt_token_ids) for r in engine.generate(batch[:1]))
    assert n_tokens * len(batch) > 4096  # the batch's prefills need more than one scheduler step
    pairs = [(p, 1000 + i) for i, p in enumerate(batch)]
    first = engine.generate(pairs)
    assert len(first) == 200 and {r.sample for r in first} == {0, 1}
    assert [(r.prompt.id, r.sample) for r in first] == [(p.id, j) for p in batch for j in (0, 1)]
    assert all(r.completion_token_ids and len(r.logprobs) == len(r.completion_token_ids) for r in first)
