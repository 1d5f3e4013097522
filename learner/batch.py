"""Turn rollouts into padded model inputs for the policy's forward pass.

The learner uses the *engine's* prompt token ids (image placeholders already expanded) and
rebuilds ``pixel_values`` / ``image_grid_thw`` from the image files with the same processor, so
that the policy scores exactly the tokens the engine sampled. Vision special tokens inside a
completion (a policy can emit them) are replaced by padding and masked out: fed back as text
they would make the image-token count disagree with the image features and kill the step.
"""
from __future__ import annotations


import torch

from data.images import open_rgb
from samples import TrainItem


def item_from_rollout(r, advantage: float) -> TrainItem:
    return TrainItem(r.key, r.prompt_token_ids, r.completion_token_ids, r.prompt.images, float(advantage), r.logprobs)


def sanitize(tokens: list[int], banned: set[int], pad_id: int) -> tuple[list[int], list[int]]:
    """(tokens with banned ids replaced by ``pad_id``, mask with 0 at those positions)."""
    return ([pad_id if t in banned else t for t in tokens], [0 if t in banned else 1 for t in tokens])


def collate(items: list[TrainItem], vision, pad_id: int, banned: set[int], image_token_id: int) -> dict:
    """Model inputs plus the completion-aligned views the loss needs. ``vision(images)`` gives the
    family's vision inputs and the image tokens they fill (``Family.vision_inputs``).

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
        vis, expected = vision(images)
        inputs.update(vis)
        if "image_grid_thw" in vis:
            # transformers locates image tokens for Qwen2.5-VL's 3D rotary positions through this
            # mask; without it every position is laid out as text, silently (2.7 nats per token off
            # the engine on a trained model, invisible on a random one)
            inputs["mm_token_type_ids"] = (input_ids == image_token_id).long()
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


# ---------------------------------------------------------------------------- shared prompts
def groups_of(items: list[TrainItem]) -> list[list[TrainItem]]:
    """Consecutive items that share one prompt (same prompt id, token ids and images)."""
    out: list[list[TrainItem]] = []
    for it in items:
        head = out[-1][0] if out else None
        if head is not None and head.key[0] == it.key[0] and head.prompt_token_ids == it.prompt_token_ids \
                and head.images == it.images:
            out[-1].append(it)
        else:
            out.append([it])
    return out


def collate_shared(items: list[TrainItem], vision, pad_id: int, banned: set[int], image_token_id: int,
                   rope_index, dtype: torch.dtype = torch.float32) -> dict:
    """Like ``collate``, but each group's prompt (and its images) is computed once.

    One row per group: ``[left padding, prompt, slot 1, ..., slot G]``, every slot ``S`` wide
    (the longest completion) and right-padded, so that the logits every row needs sit at the same
    columns. A 4D mask lets a slot see the prompt and its own causal past, never another slot;
    3D rotary positions come from ``rope_index(ids [1, P], mm_token_type_ids [1, P], image_grid_thw)``
    on the prompt alone, and every slot restarts at the prompt's largest position + 1 -- what the
    unshared sequence prompt + completion gets (not the prompt's token count: image tokens share
    positions). The outputs ``targets`` / ``mask`` / ``behaviour`` are ``[n_items, S]`` in item
    order, so the loss code is the same; gradients equal the unshared ones up to float round-off.
    """
    groups = groups_of(items)
    R, G = len(groups), max(len(g) for g in groups)
    S = max(len(it.completion_token_ids) for it in items)
    P = max(len(g[0].prompt_token_ids) for g in groups)
    L = P + G * S
    input_ids = torch.full((R, L), pad_id, dtype=torch.long)
    positions = torch.zeros((3, R, L), dtype=torch.long)
    segment = torch.full((R, L), -2, dtype=torch.long)  # -2 left padding, -1 prompt, i slot i
    images = [open_rgb(p) for g in groups for p in g[0].images]
    vision = vision(images)[0] if images else None
    n_img = 0
    for r, g in enumerate(groups):
        prompt = torch.tensor(g[0].prompt_token_ids, dtype=torch.long)
        a = P - len(prompt)  # left padding: every prompt ends at column P
        input_ids[r, a:P], segment[r, a:P] = prompt, -1
        k = len(g[0].images)
        grid = vision["image_grid_thw"][n_img:n_img + k] if vision is not None and k else None
        n_img += k
        pos = rope_index(prompt[None], (prompt[None] == image_token_id).long(), grid)  # [3, 1, len(prompt)]
        positions[:, r, a:P] = pos[:, 0]
        start = int(pos.max()) + 1
        for i in range(G):
            positions[:, r, P + i * S:P + (i + 1) * S] = start + torch.arange(S)
            segment[r, P + i * S:P + (i + 1) * S] = i
        for i, it in enumerate(g):
            comp, _ = sanitize(it.completion_token_ids, banned, pad_id)
            input_ids[r, P + i * S:P + i * S + len(comp)] = torch.tensor(comp, dtype=torch.long)
    causal = torch.ones((L, L), dtype=torch.bool).tril()
    same = segment[:, :, None] == segment[:, None, :]  # [R, L, L]
    allowed = causal & (same | (segment == -1)[:, None, :])
    mask4d = torch.zeros((R, 1, L, L), dtype=dtype).masked_fill(~allowed[:, None], torch.finfo(dtype).min)
    # logits of slot i: column P-1 predicts its first token, then its own columns
    keep = torch.tensor([c for i in range(G) for c in [P - 1] + list(range(P + i * S, P + i * S + S - 1))])
    inputs = {"input_ids": input_ids, "attention_mask": mask4d, "position_ids": positions, "logits_to_keep": keep,
              "shared_prompt": (P, G, S)}  # (learner.attention: each slot attends to the prompt and itself only)
    if vision is not None:
        inputs["pixel_values"], inputs["image_grid_thw"] = vision["pixel_values"], vision["image_grid_thw"]
    rows = [r * G + i for r, g in enumerate(groups) for i in range(len(g))]  # (group row, slot) -> item
    targets = torch.full((len(items), S), pad_id, dtype=torch.long)
    loss_mask = torch.zeros((len(items), S), dtype=torch.float32)
    ordered = [it for g in groups for it in g]
    for j, it in enumerate(ordered):
        comp, cmask = sanitize(it.completion_token_ids, banned, pad_id)
        targets[j, :len(comp)] = torch.tensor(comp, dtype=torch.long)
        loss_mask[j, :len(cmask)] = torch.tensor(cmask, dtype=torch.float32)
    offsets = [0] * len(items)
    lm_tokens = sum(len(g[0].prompt_token_ids) + sum(len(it.completion_token_ids) for it in g) for g in groups)
    return {"inputs": inputs, "targets": targets, "mask": loss_mask, "rows": torch.tensor(rows), "slot": S,
            "advantages": torch.tensor([it.advantage for it in ordered], dtype=torch.float32), "items": ordered,
            "offsets": offsets, "behaviour": behaviour_logprobs(ordered, offsets, S),
            "lm_tokens": lm_tokens, "lm_tokens_unshared": sum(len(it.prompt_token_ids) + len(it.completion_token_ids)
                                                              for it in items)}
