"""The rollout engine on its own (vLLM in this process): seeded sampling over a batch whose
prefills cannot all fit in one scheduler step, and prompts it must refuse without failing the
others."""
import dataclasses
import os

import pytest

import conf

pytestmark = pytest.mark.e2e
MAX_LEN = 256


@pytest.fixture(scope="module")
def engine(tiny_model):
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from actors.rollout import RolloutEngine
    rollout = conf.OmegaConf.to_container(conf.load(["rollout.max_new_tokens=4", "rollout.num_generations=2",
                                                     f"rollout.max_model_len={MAX_LEN}"]).rollout)
    return RolloutEngine(tiny_model, rollout, seed=0)


@pytest.fixture(scope="module")
def prompts(synthetic):
    from data.loaders import load_prompts
    return load_prompts(str(synthetic / "rec_train.jsonl"), str(synthetic), "rec")[0]


def test_seeded_sampling_survives_prefills_spread_over_scheduler_steps(engine, prompts):
    """Regression: with chunked prefill, a prompt split across steps made vLLM rewind its seeded
    CPU generator ("RuntimeError: CPU Generator does not use offset") and killed the run. Here
    ~100 prompts of ~90 tokens (more than one step's 4096-token budget) sample with per-request seeds."""
    batch = (prompts * 2)[:100]
    n_tokens = sum(len(r.prompt_token_ids) for r in engine.generate(batch[:1]))
    assert n_tokens * len(batch) > 4096  # the batch's prefills need more than one scheduler step
    pairs = [(p, 1000 + i) for i, p in enumerate(batch)]
    first = engine.generate(pairs)
    assert len(first) == 200 and {r.sample for r in first} == {0, 1}
    assert [(r.prompt.id, r.sample) for r in first] == [(p.id, j) for p in batch for j in (0, 1)]
    assert all(r.completion_token_ids and len(r.logprobs) == len(r.completion_token_ids) for r in first)


def test_a_prompt_the_engine_cannot_take_is_refused_and_the_others_are_generated(engine, prompts, tmp_path):
    """An over-long prompt (vLLM refuses the whole call) and an image gone bad after loading come back
    as ``Refused`` in their places; the others get exactly the samples a clean call gives them."""
    from data.prepare import PromptLength
    from samples import Refused, Rollout
    good = prompts[:3]
    broken = tmp_path / "broken.png"
    broken.write_bytes(open(good[0].images[0], "rb").read()[:40])  # truncated: PIL cannot decode it
    too_long = dataclasses.replace(good[1], id="too-long", question=good[1].question + " the red one" * 200)
    unreadable = dataclasses.replace(good[2], id="unreadable", images=(str(broken),))
    clean = engine.generate([(p, 7 + i) for i, p in enumerate(good)])
    mixed = engine.generate([(good[0], 7), (too_long, 50), (good[1], 8), (unreadable, 51), (good[2], 9)])
    refused = [r for r in mixed if isinstance(r, Refused)]
    assert [r.prompt.id for r in refused] == ["too-long", "unreadable"]
    assert "VLLMValidationError" in refused[0].reason and "maximum context length" in refused[0].reason
    assert "UnidentifiedImageError" in refused[1].reason or "OSError" in refused[1].reason
    rollouts = [r for r in mixed if isinstance(r, Rollout)]
    assert [(r.prompt.id, r.completion_token_ids) for r in rollouts] == [(r.prompt.id, r.completion_token_ids)
                                                                          for r in clean]
    # the load-time count (data.prepare.PromptLength) is the engine's own, images included
    count = PromptLength(engine.processor)
    assert [count(p) for p in good] == [len(r.prompt_token_ids) for r in clean[::2]]
    assert count(too_long) >= MAX_LEN
    # a call whose every prompt is refused returns only the refusals
    assert [type(r).__name__ for r in engine.generate([too_long, unreadable])] == ["Refused", "Refused"]


def test_completions_are_decoded_as_vllm_decodes_them_with_each_sampled_logprob(engine, prompts):
    """The engine asks vLLM for neither text nor a dict per token (``detokenize=False``, flat
    log-probs) and decodes each completion once at the end: texts and log-probs equal to what vLLM's
    own incremental detokenizer and per-token dicts give at the same seeds -- including completions
    that end inside a character (random weights draw random bytes), which vLLM leaves out."""
    tok = engine.processor.tokenizer
    engine.cfg["max_new_tokens"] = 48
    try:
        pairs = [(p, 300 + i) for i, p in enumerate(prompts[:16])]
        ours = engine.generate(pairs)
        params = []
        for _, seed in pairs:
            sp = engine.sampling_params(2, seed=seed)
            assert (sp.detokenize, sp.flat_logprobs) == (False, True)
            sp.detokenize, sp.flat_logprobs = True, False  # vLLM's own text and per-token dicts
            params.append(sp)
        theirs = engine.llm.generate([engine._request(p) for p, _ in pairs], params, use_tqdm=False)
    finally:
        engine.cfg["max_new_tokens"] = 4
    want = [(list(c.token_ids), c.text, [next(iter(d.values())).logprob for d in c.logprobs])
            for o in theirs for c in o.outputs]
    assert [(r.completion_token_ids, r.completion_text, r.logprobs) for r in ours] == want
    cut = [r for r in ours if tok.decode(r.completion_token_ids, skip_special_tokens=True).endswith("\ufffd")]
    assert cut and all(not r.completion_text.endswith("\ufffd") for r in cut)  # the case is covered
    assert len({r.completion_text for r in ours}) > 16 and all(len(r.completion_token_ids) > 4 for r in ours)


def test_the_samples_of_a_prompt_share_its_prefill_and_draw_what_unshared_ones_draw(engine, prompts, tiny_model):
    """``rollout.block_size=auto`` is 32 on CPU: requests for one prompt prefilled in one step share its
    full KV blocks (vLLM's prefix cache; the block holding the prompt's last token is always computed),
    so G samples of a P-token prompt cost P + (G - 1) * (P - 32 * ((P - 1) // 32)) prefill tokens
    instead of G * P -- vLLM's CPU default block of 128 shares nothing of a prompt this short. The
    samples at fixed seeds are the same either way. (Last in the module: it rebuilds the engine.)"""
    from vllm import SamplingParams

    def run(eng):
        eng.llm.reset_prefix_cache()
        req = eng._request(prompts[0])  # the same prompt twice in one call, as vLLM fans out n=G
        twice = eng.llm.generate([req, req], SamplingParams(max_tokens=1, temperature=0.0), use_tqdm=False)
        eng.llm.reset_prefix_cache()
        samples = eng.generate([(p, 100 + i) for i, p in enumerate(prompts[:4])])
        return [o.num_cached_tokens for o in twice], len(twice[0].prompt_token_ids), samples

    assert engine.info()["block_size"] == 32
    cached, P, shared = run(engine)
    assert 32 < P < 128
    assert cached == [0, (P - 1) // 32 * 32]  # every full block but the one holding the last token
    engine.reinit(model_path=tiny_model, cfg=dict(engine.cfg, block_size=128), seed=0)
    assert engine.info()["block_size"] == 128
    cached, _, unshared = run(engine)
    assert cached == [0, 0]
    assert [r.completion_token_ids for r in shared] == [r.completion_token_ids for r in unshared]
    flat = lambda rs: [lp for r in rs for lp in r.logprobs]  # noqa: E731  (4 prompts x G=2 x 4 tokens)
    assert len(flat(shared)) == 4 * 2 * 4 and flat(shared) == pytest.approx(flat(unshared), abs=1e-5)
