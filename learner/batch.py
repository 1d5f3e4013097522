"""Turn rollouts into padded model inputs for the policy's forward pass.

The learner uses the *engine's* prompt token ids (image placeholders already expanded) and
rebuilds ``pixel_values`` / ``image_grid_thw`` from the image files with the same processor, so
that the policy scores exactly the tokens the engine sampled. Vision special tokens inside a
completion (a policy can emit them) are replaced by padding and masked out: fed back as text
they would make the image-token count disagree with the image features and kill the step.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from data.images import open_rgb


@dataclass
class TrainItem:
    """One completion to learn from: the learner's whole view of a rollout."""
    key: tuple[str, int]
    prompt_token_ids: list[int]
    completion_token_ids: list[int]
    images: tuple[str, ...]
    advantage: float
    engine_logprobs: list[float]


def item_from_rollout(r, advantage: float) -> TrainItem:
    return TrainItem(r.key, r.prompt_token_ids, r.completion_token_ids, r.prompt.images, float(advantage), r.logprobs)


def sanitize(tokens: list[int], banned: set[int], pad_id: int) -> tuple[list[int], list[int]]:
    """(tokens with banned ids replaced by ``pad_id``, mask with 0 at those positions)."""
    return ([pad_id if t in banned else t for t in tokens], [0 if t in banned else 1 for t in tokens])


def collate(items: list[TrainItem], image_processor, pad_id: int, banned: set[int], image_token_id: int) -> dict:
    """Model inputs plus the completion-aligned views the loss needs.

    Returns ``inputs`` (for the model, with ``logits_to_keep`` selecting only positions that
    predict a completion token), ``targets`` ``[b, K]``, ``mask`` ``[b, K]``, ``advantages`` ``[b]``,
    ``behaviour`` ``[b, K]`` (the engine's log-probs) and ``offsets`` (each item's first column)."""
    seqs, masks, starts = [], [], []
    for it in items:
        comp, cmask = sanitize(it.completion_token_ids, banned, pad_id)
        seqs.append(list(it.prompt_token_ids) + comp)
        masks.append([0] * len(it.prompt_token_ids) + cmask)
        starts.append(len(it.prompt_token_ids))
    L = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), L), dtype=torch.long)
    loss_mask = torch.zeros((len(seqs), L), dtype=torch.float32)
    for i, (s, m) in enumerate(zip(seqs, masks)):
        input_ids[i, :len(s)] = torch.tensor(s)
        attention[i, :len(s)] = 1
        loss_mask[i, :len(m)] = torch.tensor(m, dtype=torch.float32)
    # logits at position t predict token t+1; keep only positions that can predict a completion token
    first = max(min(starts) - 1, 0)
    keep = torch.arange(first, L - 1)  # [K]
    inputs = {"input_ids": input_ids, "attention_mask": attention, "logits_to_keep": keep}
    images = [open_rgb(p) for it in items for p in it.images]
    if images:
        vision = image_processor(images=images, return_tensors="pt")
        inputs["pixel_values"] = vision["pixel_values"]
        inputs["image_grid_thw"] = vision["image_grid_thw"]
        # transformers locates image tokens for Qwen2.5-VL's 3D rotary positions through this
        # mask; without it every position is laid out as text, silently (2.7 nats per token off
        # the engine on a trained model, invisible on a random one)
        inputs["mm_token_type_ids"] = (input_ids == image_token_id).long()
        merge = image_processor.merge_size ** 2
        expected = int(vision["image_grid_thw"].prod(-1).sum()) // merge
        found = int((input_ids == image_token_id).sum())
        if expected != found:
            raise ValueError(f"prompt token ids carry {found} image tokens but the images give {expected} "
                             f"features: the learner's image processor settings differ from the engine's")
    offsets = [s - first - 1 for s in starts]  # column of each item's first completion token
    return {"inputs": inputs, "targets": input_ids[:, first + 1:], "mask": loss_mask[:, first + 1:],
            "advantages": torch.tensor([it.advantage for it in items], dtype=torch.float32), "items": items,
            "offsets": offsets, "behaviour": behaviour_logprobs(items, offsets, L - 1 - first)}


def behaviour_logprobs(items: list[TrainItem], offsets: list[int], width: int) -> torch.Tensor:
    """The engine's log-probs ``[b, width]``, aligned with the loss columns (0 elsewhere)."""
    out = torch.zeros((len(items), width), dtype=torch.float32)
    for i, (it, o) in enumerate(zip(items, offsets)):
        if it.engine_logprobs:
            out[i, o:o + len(it.engine_logprobs)] = torch.tensor(it.engine_logprobs, dtype=torch.float32)
    return out
