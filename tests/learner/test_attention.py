"""The learner's blockwise attention for shared-prompt rows against SDPA over the whole masked row."""
import pytest
import torch
import torch.nn.functional as F

from learner.attention import NAME, install, shared_prompt_attention

R, H, KV, D, P, G, S = 2, 4, 2, 8, 7, 3, 5
L = P + G * S


def _row_mask(dtype, pad=(0, 3)):
    """``collate_shared``'s rule: row r's first ``pad[r]`` columns are left padding, the prompt sees
    itself causally, a slot sees the prompt and its own causal past."""
    seg = torch.full((R, L), -1)
    for r, n in enumerate(pad):
        seg[r, :n] = -2
    for i in range(G):
        seg[:, P + i * S:P + (i + 1) * S] = i
    allowed = torch.ones(L, L, dtype=torch.bool).tril() & ((seg[:, :, None] == seg[:, None, :]) | (seg == -1)[:, None, :])
    return torch.zeros(R, 1, L, L, dtype=dtype).masked_fill(~allowed[:, None], torch.finfo(dtype).min)


def _qkv(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(R, h, L, D, generator=g).to(dtype).requires_grad_() for h in (H, KV, KV)]


def _dense(q, k, v, mask):  # every query against the whole row, the other slots masked out: [R, L, H, D]
    k, v = k.repeat_interleave(H // KV, 1), v.repeat_interleave(H // KV, 1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=D ** -0.5).transpose(1, 2)


class _Module:  # what HF's SDPA path reads off the attention module
    num_key_value_groups, is_causal, training = H // KV, True, False


def test_blockwise_equals_the_masked_row_in_values_and_gradients():
    mask = _row_mask(torch.float32)
    q, k, v = _qkv(torch.float32)
    want = _dense(q, k, v, mask)
    got, weights = shared_prompt_attention(_Module(), q, k, v, mask, scaling=D ** -0.5, shared_prompt=(P, G, S))
    assert weights is None and got.shape == (R, L, H, D) and got.is_contiguous()
    assert torch.allclose(got, want, atol=1e-6), float((got - want).abs().max())
    up = torch.randn(R, L, H, D, generator=torch.Generator().manual_seed(1))
    g_want = torch.autograd.grad((want * up).sum(), (q, k, v))
    g_got = torch.autograd.grad((got * up).sum(), (q, k, v))
    for a, b in zip(g_got, g_want):
        assert torch.allclose(a, b, atol=1e-5), float((a - b).abs().max())
    # no real position of row 1 attends to its left padding: through them, its keys and values get no gradient
    up[1, :3] = 0.0
    again, _ = shared_prompt_attention(_Module(), q, k, v, mask, scaling=D ** -0.5, shared_prompt=(P, G, S))
    g_pad = torch.autograd.grad((again * up).sum(), (k, v))
    assert float(g_pad[0][1, :, :3].abs().max()) == 0.0 and float(g_pad[1][1, :, :3].abs().max()) == 0.0
    assert float(g_pad[0][1, :, 3:].abs().max()) > 0.0


def test_bf16_inputs_give_bf16_outputs_computed_in_fp32_on_cpu():
    mask = _row_mask(torch.bfloat16)
    q, k, v = _qkv(torch.bfloat16)
    got, _ = shared_prompt_attention(_Module(), q, k, v, mask, scaling=D ** -0.5, shared_prompt=(P, G, S))
    want = _dense(q.float(), k.float(), v.float(), _row_mask(torch.float32))
    assert got.dtype == torch.bfloat16
    # fp32 attention rounded to bf16 once: within one bf16 step (2**-8 relative) of the fp32 result
    assert bool(((got.float() - want).abs() <= want.abs() * 2 ** -8 + 1e-6).all())


def test_without_the_layout_it_is_sdpa_and_a_wrong_layout_is_refused():
    mask = _row_mask(torch.float32)
    q, k, v = _qkv(torch.float32)
    plain, _ = shared_prompt_attention(_Module(), q, k, v, mask, scaling=D ** -0.5)
    assert torch.allclose(plain, _dense(q, k, v, mask), atol=1e-6)
    with pytest.raises(ValueError, match="not a prompt of 7 and 3 slots of 6"):
        shared_prompt_attention(_Module(), q, k, v, mask, shared_prompt=(P, G, S + 1))


def test_install_sets_the_language_model_only(tiny_model):
    from transformers import AutoModelForImageTextToText
    model = AutoModelForImageTextToText.from_pretrained(tiny_model)
    vision_before = model.config.vision_config._attn_implementation
    assert install(model)
    layer = model.model.language_model.layers[0].self_attn
    assert layer.config._attn_implementation == NAME
    assert model.config.vision_config._attn_implementation == vision_before != NAME
