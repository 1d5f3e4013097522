"""The DeepSpeed learner as a plain class (no Ray): robust to vision tokens, micro-batch invariant."""
import json
import math
import pathlib
import warnings

import pytest
import torch

import conf
from learner.batch import collate, sanitize
from samples import TrainItem
from weights.net import free_port


def _items(tiny_model, synthetic, n=4, vision_junk=False):
    from transformers import AutoProcessor
    from data.prompts import prompt_inputs
    proc = AutoProcessor.from_pretrained(tiny_model)
    tok = proc.tokenizer
    pad = tok.convert_tokens_to_ids("<|image_pad|>")
    rows = [json.loads(l) for l in open(synthetic / "rec_train.jsonl")][:n]
    items = []
    g = torch.Generator().manual_seed(0)
    for i, row in enumerate(rows):
        img = str(synthetic / row["image"])
        ids = prompt_inputs(proc, row["conversations"][0]["value"], [img], "rec")["input_ids"][0].tolist()
        comp = torch.randint(10, 300, (5 + 3 * i,), generator=g).tolist()
        if vision_junk:
            comp[2] = pad  # what a policy can sample: an image placeholder in its own text
        items.append(TrainItem((row["id"], 0), ids, comp, (img,), [1.0, -1.0][i % 2], [0.0] * len(comp)))
    return items


def _learner(tiny_model, mbs, per_rank_items=4, **over):
    """A learner in fp32 unless asked otherwise: ``auto`` would pick bf16 on a CPU with native bf16,
    and the exactness checks here compare to fp32 round-off."""
    from learner.learner import Learner
    c = conf.load([f"learner.micro_batch_size={mbs}", "learner.lr=1e-2", "learner.dtype=fp32",
                   *[f"{k}={v}" for k, v in over.items()]])
    plain = lambda n: conf.OmegaConf.to_container(n, resolve=True)  # noqa: E731
    lr = Learner(0, 1, tiny_model, plain(c.model), plain(c.learner), plain(c.rollout), seed=0, total_steps=10,
                 per_rank_items=per_rank_items)
    lr.setup("127.0.0.1", free_port())
    return lr


def test_sanitize_masks_vision_tokens():
    assert sanitize([5, 9, 7, 9], {9}, 0) == ([5, 0, 7, 0], [1, 0, 1, 0])


def test_forced_vision_token_in_a_completion_does_not_break_the_step(tiny_model, synthetic):
    items = _items(tiny_model, synthetic, vision_junk=True)
    lr = _learner(tiny_model, 2)
    from transformers import AutoProcessor
    vision = lr.family.vision_inputs(AutoProcessor.from_pretrained(tiny_model))
    b = collate(items[:2], vision, lr.pad_id, lr.banned, lr.image_token_id)
    # the junk token was replaced and masked: image tokens in the batch are the prompts' only
    in_prompts = sum(i.prompt_token_ids.count(lr.image_token_id) for i in items[:2])
    assert in_prompts >= 32 and int((b["inputs"]["input_ids"] == lr.image_token_id).sum()) == in_prompts
    m = lr.train_step(items)
    assert m["items"] == 4 and m["tokens"] == sum(len(i.completion_token_ids) - 1 for i in items)
    assert all(torch.isfinite(torch.tensor(v)) for k, v in m.items() if k != "grad_norm")
    assert m["grad_norm"] > 0


def test_micro_batch_size_does_not_change_the_gradient_or_the_update(tiny_model, synthetic):
    items = _items(tiny_model, synthetic)
    norms, sums, losses = [], [], []
    for mbs in (1, 4):
        lr = _learner(tiny_model, mbs, **{"learner.beta": 0.0, "learner.grad_clip": 0})
        before = lr.param_checksum(["lm_head"])
        m = lr.train_step(items)
        after = lr.param_checksum(["lm_head"])
        assert after != before  # the policy moved
        norms.append(m["grad_norm"])
        losses.append(m["loss"])
        sums.append(list(after.values())[0])
    assert norms[0] == pytest.approx(norms[1], rel=1e-4)
    assert losses[0] == pytest.approx(losses[1], rel=1e-5, abs=1e-7)
    assert sums[0] == pytest.approx(sums[1], rel=1e-4)


def test_frozen_vision_tower_is_neither_trained_nor_sent(tiny_model, synthetic):
    lr = _learner(tiny_model, 4, **{"model.freeze_vision_tower": "true"})
    names = [n for n, _, _ in lr.weight_meta()]
    assert names and not any("visual" in n for n in names) and "lm_head.weight" in names
    before = lr.param_checksum(["visual.blocks.0.mlp"])
    lr.train_step(_items(tiny_model, synthetic))
    assert lr.param_checksum(["visual.blocks.0.mlp"]) == before


def test_lora_adapter_sync_sends_the_adapters_under_peft_names(tiny_model, synthetic):
    lr = _learner(tiny_model, 4, **{"learner.lora.r": 4, "learner.lora.alpha": 8, "learner.lora.sync": "adapter"})
    meta = lr.weight_meta()
    adapted = {n for n, p in lr.engine.module.named_parameters() if p.requires_grad}
    assert {n for n, _, _ in meta} == {n.replace(".default.", ".") for n in adapted}  # every adapter, nothing else
    q = next(shape for n, _, shape in meta if n.endswith("layers.0.self_attn.q_proj.lora_A.weight"))
    assert q[0] == 4  # rank x in_features
    config = lr.adapter_config()
    assert config["r"] == 4 and config["lora_alpha"] == 8 and config["peft_type"] == "LORA"
    assert "visual" in config["target_modules"]  # the regex that keeps the vision tower out


def test_lora_trains_adapters_only_and_sends_merged_base_weights(tiny_model, synthetic):
    lr = _learner(tiny_model, 4, **{"learner.lora.r": 4, "learner.lora.alpha": 8})  # sync: auto, merged on CPU
    assert lr.adapter_config() is None
    names = [n for n, _, _ in lr.weight_meta()]
    # only the adapted language-model layers, under the names vLLM loads (no lora_ / base_layer)
    assert names and all(".base_layer." not in n and "lora_" not in n and "visual" not in n for n in names)
    assert any(n.endswith("self_attn.q_proj.weight") for n in names)
    base_name = "layers.0.self_attn.q_proj.base_layer.weight"
    base_before = lr.param_checksum([base_name])
    m = lr.train_step(_items(tiny_model, synthetic))
    assert m["grad_norm"] > 0
    assert lr.param_checksum([base_name]) == base_before  # the frozen base never moves, bit for bit
    sent = {n: (p, d) for n, p, d in lr._named_weights()}
    p, delta = sent[next(n for n in sent if n.endswith("layers.0.self_attn.q_proj.weight"))]
    assert float(delta().abs().sum()) > 0  # the adapter moved: what is sent is base + delta
    with pytest.raises(ValueError, match="LoRA with learner.zero_stage=3"):
        _learner(tiny_model, 4, **{"learner.lora.r": 4, "learner.zero_stage": 3})


def _engine_logprobs(lr, items):
    """Give ``items`` the log-probs an engine holding ``lr``'s current weights would report."""
    for it, lps in zip(items, lr.logprobs(items)):
        it.engine_logprobs = lps
    return items


@pytest.mark.parametrize("mode", ["none", "bypass", "decoupled"])
def test_num_iterations_reuses_old_logprobs(tiny_model, synthetic, mode):
    lr = _learner(tiny_model, 4, **{"learner.num_iterations": 2, "learner.beta": 0.0, "learner.off_policy": mode,
                                    "trainer.max_staleness": 0})
    m = lr.train_step(_engine_logprobs(lr, _items(tiny_model, synthetic)))
    assert m["items"] == 4 and m["grad_norm"] > 0
    # the first pass sees ratio 1 (old = current: recomputed, or the engine's log-probs of the same
    # weights); the step count reflects two optimizer steps
    assert m["ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    assert m["offpolicy/mismatch_kl"] == pytest.approx(0.0, abs=1e-6)
    assert lr.scheduler.last_epoch == 2


def test_stale_samples_are_corrected_against_the_engines_logprobs(tiny_model, synthetic):
    """Samples drawn by older weights: bypass takes the ratio against the engine's log-probs (so it
    is not 1), decoupled recomputes a proximal policy (ratio 1) and weights tokens by pi_prox / mu;
    both report the same mismatch, and the IS weights are exactly exp(pi - mu) of the same tokens."""
    items = _items(tiny_model, synthetic)
    stale = _learner(tiny_model, 4, **{"learner.beta": 0.0})
    stale.train_step(_engine_logprobs(stale, _items(tiny_model, synthetic)))  # the "engine" is one update behind
    out = {}
    for mode in ("bypass", "decoupled"):
        lr = _learner(tiny_model, 4, **{"learner.beta": 0.0, "learner.off_policy": mode})
        lr.train_step(_engine_logprobs(lr, _items(tiny_model, synthetic)))  # one update ahead of the start
        lps = lr.logprobs(items)
        behaviour = _engine_logprobs(_learner(tiny_model, 4), [TrainItem(i.key, i.prompt_token_ids,
                                     i.completion_token_ids, i.images, i.advantage, []) for i in items])
        out[mode] = (lr.train_step(behaviour), lps, [i.engine_logprobs for i in behaviour])
    (mb, lps, mu), (md, _, _) = out["bypass"], out["decoupled"]
    assert mb["offpolicy/mismatch_kl"] > 1e-4  # the policy moved away from the sampling weights
    assert mb["offpolicy/mismatch_kl"] == pytest.approx(md["offpolicy/mismatch_kl"], rel=1e-4)
    assert mb["offpolicy/is_mean"] == pytest.approx(md["offpolicy/is_mean"], rel=1e-5)
    ws = [math.exp(a - b) for x, y in zip(lps, mu) for a, b in zip(x, y)]
    assert mb["offpolicy/is_max"] == pytest.approx(max(ws), rel=1e-4)
    assert md["ratio_mean"] == pytest.approx(1.0, abs=1e-5) and abs(mb["ratio_mean"] - 1.0) > 1e-4


@pytest.mark.parametrize("over", [{"learner.dtype": "bf16"}, {"learner.gradient_checkpointing": "true"},
                                  {"learner.zero_stage": 2, "learner.dtype": "bf16"}])
def test_bf16_zero_and_gradient_checkpointing_train(tiny_model, synthetic, over):
    lr = _learner(tiny_model, 2, **{"learner.beta": 0.0, **over})
    before = lr.param_checksum(["lm_head"])
    m = lr.train_step(_items(tiny_model, synthetic))
    assert m["items"] == 4 and math.isfinite(m["loss"]) and m["grad_norm"] > 0
    assert lr.param_checksum(["lm_head"]) != before


def _three_steps(lr, tiny_model, synthetic) -> tuple[list[float], dict]:
    """The losses of three GRPO steps on the same items, and the weights after them."""
    losses = [lr.train_step(_items(tiny_model, synthetic))["loss"] for _ in range(3)]
    return losses, {n: p.detach().clone() for n, p in lr.engine.module.named_parameters()}


def test_one_rank_skips_deepspeeds_all_reduce_with_the_same_update(tiny_model, synthetic):
    """A single ZeRO-0 rank does not all-reduce its gradients over itself (a speed change): the losses
    and weights after three steps are exactly those of the all-reducing engine."""
    runs = []
    for allreduce in (False, True):
        lr = _learner(tiny_model, 2, **{"learner.lr": "1e-3"})
        assert lr.engine.enable_backward_allreduce is False  # what the learner sets up for one rank
        lr.engine.enable_backward_allreduce = allreduce
        runs.append(_three_steps(lr, tiny_model, synthetic))
    (la, wa), (lb, wb) = runs
    assert la == lb and len(set(la)) > 1
    assert all(torch.equal(wa[n], wb[n]) for n in wb)
    assert not all(torch.equal(wb[n], lr.ref.get_parameter(n)) for n in wb)  # the steps moved the weights


@pytest.mark.parametrize("stage", [0, 2])
def test_fused_adam_gives_the_foreach_update(tiny_model, synthetic, stage):
    """learner.adam_impl=fused (the default, a speed change) against torch's foreach AdamW: the same
    losses and weights after three steps, to fp32 round-off (the fused kernel orders a few
    operations differently: 1 ulp)."""
    runs = {}
    for impl in ("fused", "foreach"):
        lr = _learner(tiny_model, 2, **{"learner.adam_impl": impl, "learner.zero_stage": stage, "learner.lr": "1e-3"})
        assert lr.optimizer_core.defaults["fused"] is (impl == "fused")
        runs[impl] = _three_steps(lr, tiny_model, synthetic)
    (la, wa), (lb, wb) = runs["fused"], runs["foreach"]
    assert la == pytest.approx(lb, rel=1e-5, abs=1e-7) and la[0] == lb[0]  # the first loss precedes any update
    assert wa.keys() == wb.keys()
    moved = 0
    for n in wa:
        assert float((wa[n] - wb[n]).abs().max()) <= 2e-6, n
        moved += int(not torch.equal(wa[n], lr.ref.get_parameter(n)))
    assert moved > 0  # the steps did update the weights


@pytest.mark.parametrize("stage", [0, 2])
def test_non_finite_step_is_skipped_never_applied(tiny_model, synthetic, stage):
    lr = _learner(tiny_model, 2, **{"learner.beta": 0.0, "learner.zero_stage": stage})
    bad = _items(tiny_model, synthetic)
    bad[1].advantage = float("nan")  # fault injection: a NaN reaches the loss
    before = lr.param_checksum(["lm_head", "layers.0.mlp"])
    m = lr.train_step(bad)
    assert m["skipped_updates"] == 1
    assert lr.param_checksum(["lm_head", "layers.0.mlp"]) == before  # weights untouched
    assert not any(lr.optimizer_core.state.values())  # no Adam moments were ever created
    m = lr.train_step(_items(tiny_model, synthetic))  # the next good step applies normally
    assert m["skipped_updates"] == 0 and lr.param_checksum(["lm_head"]) != {k: v for k, v in before.items() if "lm_head" in k}


class _NanGrad(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss whose gradient is not finite."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_non_finite_gradient_is_skipped_under_every_zero_stage(tiny_model, synthetic, stage):
    lr = _learner(tiny_model, 2, **{"learner.beta": 0.0, "learner.zero_stage": stage})
    layer = lr.engine.module.get_submodule("model.language_model.layers.0.mlp")
    hook = layer.register_forward_hook(lambda mod, args, out: _NanGrad.apply(out))  # fault injection
    before = lr.param_checksum(["lm_head", "layers.0.mlp", "layers.1"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = lr.train_step(_items(tiny_model, synthetic))
    assert math.isfinite(m["loss"]) and m["skipped_updates"] == 1
    assert not [w for w in caught if "lr_scheduler" in str(w.message)]  # the skip is deliberate, not a wrong order
    assert lr.scheduler.last_epoch == 1  # the schedule still counts the refused update
    assert lr.param_checksum(["lm_head", "layers.0.mlp", "layers.1"]) == before
    assert not any(lr.optimizer_core.state.values())
    hook.remove()
    m = lr.train_step(_items(tiny_model, synthetic))
    assert m["skipped_updates"] == 0 and lr.param_checksum(["lm_head"]) != {k: v for k, v in before.items() if "lm_head" in k}


@pytest.mark.e2e  # a fresh process with a DeepSpeed learner (~13 s)
def test_the_learner_listens_on_its_own_address_only(tiny_model):
    """Security: the DeepSpeed rendezvous store, gloo and the weight-sync store listen on the
    address they were given (loopback here), never on every interface (torch's default). Run in a
    fresh process: earlier tests here leave a process group (reused, so nothing new would listen)
    and a Ray driver (not the learner's) behind."""
    import subprocess
    import sys
    code = """
import json, os, sys, psutil
from tests.learner.test_learner import _learner
from weights.net import free_port
from weights.wire import WeightSender
lr = _learner(sys.argv[1], 2)
sender = WeightSender("127.0.0.1", free_port(), 1)
print(json.dumps([c.laddr.ip for c in psutil.net_connections("inet") if c.pid == os.getpid() and c.status == "LISTEN"]))
"""
    repo = pathlib.Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code, tiny_model], cwd=repo, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    listening = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(listening) >= 2, listening  # at least the two stores
    assert all(ip == "127.0.0.1" for ip in listening), listening


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_checkpoints_round_trip_weights_only(tiny_model, synthetic, stage, tmp_path):
    """Save, train on, load: the saved weights are back, read with torch.load(weights_only=True)."""
    lr = _learner(tiny_model, 2, **{"learner.beta": 0.0, "learner.zero_stage": stage})
    lr.train_step(_items(tiny_model, synthetic))
    lr.save_checkpoint(str(tmp_path / "ckpt"))
    saved = lr.param_checksum(["lm_head", "layers.0.mlp"])
    lr.train_step(_items(tiny_model, synthetic))
    assert lr.param_checksum(["lm_head", "layers.0.mlp"]) != saved
    assert lr.load_checkpoint(str(tmp_path / "ckpt")) == 1
    assert lr.param_checksum(["lm_head", "layers.0.mlp"]) == saved


def test_a_checkpoint_that_would_run_code_is_refused(tiny_model, tmp_path):
    """Security: a pickle that calls a function on load (here: writes a file) is not executed."""
    import os
    import pickle

    from learner.checkpoint_io import WeightsOnlyCheckpointEngine
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": {"w": torch.ones(1)}, "evil": Payload()}, path)
    with pytest.raises(pickle.UnpicklingError):
        WeightsOnlyCheckpointEngine(None).load(str(path))
    assert not marker.exists()


def test_an_sft_step_lowers_the_loss_on_a_fixed_batch(tiny_model, synthetic):
    from data.loaders import load_prompts
    prompts, _ = load_prompts(str(synthetic / "rec_train.jsonl"), str(synthetic), "rec")
    lr = _learner(tiny_model, 4, **{"learner.beta": 0.0, "learner.lr": 3e-3})
    losses = [lr.sft_step(prompts[:4])["sft_loss"] for _ in range(6)]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < 0.8 * losses[0], losses


def _grouped_items(tiny_model, synthetic, prompts=2, G=3):
    """G completions of different lengths per prompt, laid out group after group (as the engines return them)."""
    base = _items(tiny_model, synthetic, n=prompts)
    g = torch.Generator().manual_seed(1)
    out = []
    for p in base:
        for s in range(G):
            comp = torch.randint(10, 300, (3 + 4 * s,), generator=g).tolist()
            out.append(TrainItem((p.key[0], s), p.prompt_token_ids, comp, p.images, [1.0, -0.5, 0.25][s], []))
    return out


def _grads(lr, items):
    """Gradient of sum(A * logp) over every completion token, with the learner's own batching."""
    model = lr.engine.module
    model.zero_grad(set_to_none=True)
    for b in lr._batches(items):
        logp, _ = lr._logp(model, b, grad=True)
        (logp * b["mask"] * b["advantages"][:, None]).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mbs", [6, 2])  # whole groups per micro-batch, and groups split across micro-batches
def test_shared_prompt_forward_equals_the_unshared_one_in_logprobs_and_gradients(tiny_model, synthetic, mbs):
    items = _grouped_items(tiny_model, synthetic)
    shared = _learner(tiny_model, mbs, 6, **{"learner.prefix_sharing": "true"})
    plain = _learner(tiny_model, mbs, 6, **{"learner.prefix_sharing": "false"})
    assert "rows" in shared._batches(items)[0] and "rows" not in plain._batches(items)[0]
    from transformers import AttentionInterface

    from learner.attention import NAME, shared_prompt_attention
    layouts = []  # the shared rows' layouts the blockwise attention saw (learner.attention)

    def spy(*args, shared_prompt=None, **kw):
        layouts.append(shared_prompt)
        return shared_prompt_attention(*args, shared_prompt=shared_prompt, **kw)
    AttentionInterface.register(NAME, spy)
    try:
        a, b = shared.logprobs(items), plain.logprobs(items)
    finally:
        AttentionInterface.register(NAME, shared_prompt_attention)
    layers = shared.engine.module.config.text_config.num_hidden_layers
    assert len(layouts) == layers * math.ceil(6 / mbs) and None not in layouts  # every layer of every micro-batch
    assert [len(x) for x in a] == [len(it.completion_token_ids) for it in items]
    assert max(abs(x - y) for u, v in zip(a, b) for x, y in zip(u, v)) < 1e-5
    ga, gb = _grads(shared, items), _grads(plain, items)
    assert ga.keys() == gb.keys() and any("visual" in n for n in ga)  # the vision tower gets its gradient too
    for n in ga:  # fp32 round-off: the shared prompt sums G completions' gradients in another order
        # (per tensor, relative to its norm: a bias summing many cancelling terms has elements near 0)
        assert float((ga[n] - gb[n]).norm()) <= 1e-5 * float(gb[n].norm()) + 1e-8, \
            (n, float((ga[n] - gb[n]).norm() / gb[n].norm()))
    assert sum(float(g.abs().sum()) for g in ga.values()) > 0


def test_shared_prompts_cut_the_language_model_tokens(tiny_model, synthetic):
    items = _grouped_items(tiny_model, synthetic, prompts=2, G=3)
    for it in items:
        it.engine_logprobs = [0.0] * len(it.completion_token_ids)
    m = _learner(tiny_model, 6, 6, **{"learner.prefix_sharing": "true", "learner.beta": 0.0}).train_step(items)
    prompts = [len(items[0].prompt_token_ids), len(items[3].prompt_token_ids)]
    comps = sum(len(it.completion_token_ids) for it in items)
    # unshared: every completion carries its prompt; shared: each prompt once
    assert m["learner/lm_tokens_unshared"] == 3 * sum(prompts) + comps
    assert m["learner/lm_tokens"] == sum(prompts) + comps
