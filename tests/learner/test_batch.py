"""The learner's batches reproduce the policy that generated the tokens, position for position."""
import json

import torch

from learner.batch import collate
from samples import TrainItem
from learner.grpo import token_logprobs


def test_teacher_forced_logprobs_equal_the_generating_decode(tiny_model, synthetic):
    # The learner scores completions in one teacher-forced pass; generation decodes them one token
    # at a time with a KV cache and Qwen2.5-VL's 3D (time, height, width) positions for the image.
    # The two must agree exactly, or the learner trains a different policy from the one sampled.
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from data.prompts import prompt_inputs
    proc = AutoProcessor.from_pretrained(tiny_model)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model).eval()
    image_pad = model.config.image_token_id  # the family's image placeholder
    items, decoded = [], []
    for i, line in enumerate(open(synthetic / "rec_train.jsonl").readlines()[:3]):
        row = json.loads(line)
        path = str(synthetic / row["image"])
        inp = prompt_inputs(proc, row["conversations"][0]["value"], [path], "rec")
        n = inp["input_ids"].shape[1]
        torch.manual_seed(i)
        with torch.no_grad():
            g = model.generate(**inp, max_new_tokens=12, do_sample=True, output_logits=True,
                               return_dict_in_generate=True, min_new_tokens=12)
        comp = g.sequences[0, n:].tolist()
        decoded.append([float(torch.log_softmax(s[0].float(), -1)[t]) for s, t in zip(g.logits, comp)])
        items.append(TrainItem((row["id"], 0), inp["input_ids"][0].tolist(), comp, (path,), 0.0, []))
    from models import family_of
    b = collate(items, family_of(tiny_model).vision_inputs(proc), proc.tokenizer.pad_token_id, set(), image_pad)
    with torch.no_grad():
        logp = token_logprobs(model(**b["inputs"]).logits, b["targets"])
    first = int(b["inputs"]["logits_to_keep"][0])
    for j, (it, ref) in enumerate(zip(items, decoded)):
        start = len(it.prompt_token_ids) - 1 - first
        ours = logp[j, start:start + len(ref)]
        assert torch.allclose(ours, torch.tensor(ref), atol=1e-4), (ours - torch.tensor(ref)).abs().max()
