"""The DeepSpeed learner as a plain class (no Ray): robust to vision tokens, micro-batch invariant."""
import json

import pytest
import torch

import conf
from learner.batch import TrainItem, collate, sanitize
from learner.weight_sync import free_port


def _items(tiny_model, synthetic, n=4, vision_junk=False):
    from transformers import AutoProcessor
    from data.images import open_rgb
    from data.prompts import messages
    proc = AutoProcessor.from_pretrained(tiny_model)
    tok = proc.tokenizer
    pad = tok.convert_tokens_to_ids("<|image_pad|>")
    rows = [json.loads(l) for l in open(synthetic / "rec_train.jsonl")][:n]
    items = []
    g = torch.Generator().manual_seed(0)
    for i, row in enumerate(rows):
        text = proc.apply_chat_template(messages(row["conversations"][0]["value"], 1, "rec"),
                                        add_generation_prompt=True, tokenize=False)
        img = str(synthetic / row["image"])
        ids = proc(text=[text], images=[open_rgb(img)], return_tensors="pt")["input_ids"][0].tolist()
        comp = torch.randint(10, 300, (5 + 3 * i,), generator=g).tolist()
        if vision_junk:
            comp[2] = pad  # what a policy can sample: an image placeholder in its own text
        items.append(TrainItem((row["id"], 0), ids, comp, (img,), [1.0, -1.0][i % 2], [0.0] * len(comp)))
    return items


def _learner(tiny_model, mbs, **over):
    from learner.learner import Learner
    c = conf.load([f"learner.micro_batch_size={mbs}", "learner.lr=1e-2", *[f"{k}={v}" for k, v in over.items()]])
    plain = lambda n: conf.OmegaConf.to_container(n, resolve=True)  # noqa: E731
    lr = Learner(0, 1, tiny_model, plain(c.model), plain(c.learner), plain(c.rollout), seed=0, total_steps=10,
                 per_rank_items=4)
    lr.setup("127.0.0.1", free_port())
    return lr


def test_sanitize_masks_vision_tokens():
    assert sanitize([5, 9, 7, 9], {9}, 0) == ([5, 0, 7, 0], [1, 0, 1, 0])


def test_forced_vision_token_in_a_completion_does_not_break_the_step(tiny_model, synthetic):
    items = _items(tiny_model, synthetic, vision_junk=True)
    lr = _learner(tiny_model, 2)
    from transformers import AutoProcessor
    ip = AutoProcessor.from_pretrained(tiny_model).image_processor
    b = collate(items[:2], ip, lr.pad_id, lr.banned, lr.image_token_id)
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
