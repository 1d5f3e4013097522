"""Attention for the learner's shared-prompt rows: each completion slot attends to the prompt and
to itself, never to the whole row.

``learner.batch.collate_shared`` lays a group out as one row ``[prompt (P), slot 1, ..., slot G]``
(every slot ``S`` wide) and hides the other slots from each slot with a 4D mask. With the plain
SDPA kernel every one of the ``L = P + G * S`` queries still meets all ``L`` keys: ``L**2`` scores
per head, of which a slot needs only ``P + S`` per query. At VLM-R1's G = 8 that is about 4x the
work of the same completions unshared (``python -m bench.attention``), and on CPU the attention
of these rows took a third of the learner's step at 30M. Here the attention is computed in two
dense pieces: the prompt against itself (``P x P``), and the ``G`` slots batched, each against
``[prompt keys, its own keys]`` (``S x (P + S)``) -- ``P**2 + G * S * (P + S)`` scores, the same
results up to float round-off (tested), gradients through autograd.

Installed on the language model of the policy and the reference (``install``) under the name
``vr1_shared_prompt``; a forward without the ``shared_prompt=(P, G, S)`` keyword (an unshared
batch) runs the plain SDPA path.
"""
from __future__ import annotations

import torch

NAME = "vr1_shared_prompt"


def shared_prompt_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                            shared_prompt: tuple[int, int, int] | None = None, **kwargs):
    """HF attention-interface signature: ``query [R, H, L, D]``, ``key``/``value`` ``[R, KV, L, D]``,
    ``attention_mask [R, 1, L, L]`` (additive) -> ``(output [R, L, H, D], None)``."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    if shared_prompt is None or attention_mask is None or attention_mask.dim() != 4:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    P, G, S = shared_prompt
    R, H, L, D = query.shape
    if L != P + G * S:
        raise ValueError(f"shared-prompt attention: a row of {L} positions is not a prompt of {P} and {G} slots of {S}")
    # the prompt against itself (left padding and causality from the row's own mask); the slots against
    # [prompt, themselves], where the mask of slot 1's rows is every slot's (the same prompt columns,
    # the same causal block)
    head_mask = attention_mask[:, :, :P, :P]
    mask = torch.cat([attention_mask[:, :, P:P + S, :P], attention_mask[:, :, P:P + S, P:P + S]], dim=-1)
    dtype = query.dtype
    if query.device.type == "cpu" and dtype != torch.float32:
        # CPU: SDPA's bf16 backward measured 2x slower than its fp32 one at these shapes (bench.attention)
        query, key, value, head_mask, mask = query.float(), key.float(), value.float(), head_mask.float(), mask.float()

    def sdpa(q, k, v, m):  # (grouped-query attention: K/V heads shared by H / KV query heads each)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m, dropout_p=dropout,
                                                                scale=scaling, enable_gqa=k.shape[1] != H)

    def slots(x):  # [R, h, G*S, D] -> [R*G, h, S, D]
        return x[:, :, P:].reshape(R, x.shape[1], G, S, D).transpose(1, 2).reshape(R * G, x.shape[1], S, D)

    def with_prompt(x):  # [R, h, L, D] -> [R*G, h, P+S, D]: each slot's keys after its prompt's
        prompt = x[:, :, :P].unsqueeze(1).expand(R, G, x.shape[1], P, D).reshape(R * G, x.shape[1], P, D)
        return torch.cat([prompt, slots(x)], dim=2)
    head = sdpa(query[:, :, :P], key[:, :, :P], value[:, :, :P], head_mask)
    mask = mask.unsqueeze(1).expand(R, G, 1, S, P + S).reshape(R * G, 1, S, P + S)
    tail = sdpa(slots(query), with_prompt(key), with_prompt(value), mask)
    tail = tail.reshape(R, G, H, S, D).transpose(1, 2).reshape(R, H, G * S, D)
    out = torch.cat([head, tail], dim=2).to(dtype)  # [R, H, L, D]
    return out.transpose(1, 2).contiguous(), None


def install(model) -> bool:
    """Make ``model``'s language model attend with ``shared_prompt_attention`` (the vision tower
    keeps its own); False where the model has no separate text config to set it on."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    AttentionInterface.register(NAME, shared_prompt_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)  # (2D masks of unshared batches: SDPA's)
    text = getattr(model.config, "text_config", None)
    if text is None:
        return False
    text._attn_implementation = NAME
    return True
