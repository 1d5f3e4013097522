"""learner/grpo.py on values: hand-computed cases, a naive loop, shard invariance, gradients."""
import math

import pytest
import torch

from learner.grpo import (AGG_MODES, group_advantages, importance_weights, loss_denominators, policy_loss,
                          token_logprobs)

E = math.e


def _one(logp, old, ref, adv, **kw):
    """policy_loss on a single sequence of a single token."""
    t = lambda v: torch.tensor([[v]], dtype=torch.float64)  # noqa: E731
    return policy_loss(t(logp), t(old), None if ref is None else t(ref),
                       torch.tensor([adv], dtype=torch.float64), torch.ones(1, 1), **kw)


# ---------------------------------------------------------------- hand-computed
def test_ratio_e_positive_advantage_is_clipped_to_1_2():
    # logp - old = 1 so ratio = e = 2.718; A = +1: min(e * 1, clip(e) = 1.2 * 1) = 1.2 -> loss -1.2
    loss, m = _one(1.0, 0.0, None, 1.0, beta=0.0)
    assert loss.item() == pytest.approx(-1.2)
    assert m["clip_high_frac"] == 1.0 and m["clip_low_frac"] == 0.0
    assert m["ratio_mean"] == pytest.approx(E)


def test_ratio_e_negative_advantage_is_not_clipped():
    # A = -1: min(-e, -1.2) = -e -> loss +e (the pessimistic bound keeps the unclipped term)
    loss, m = _one(1.0, 0.0, None, -1.0, beta=0.0)
    assert loss.item() == pytest.approx(E)
    assert m["clip_high_frac"] == 0.0 and m["clip_low_frac"] == 0.0


def test_small_ratio_negative_advantage_clips_low():
    # ratio = e^-1 = 0.368 < 0.8; A = -1: min(-0.368, -0.8) = -0.8 -> loss 0.8, low clip binds
    loss, m = _one(-1.0, 0.0, None, -1.0, beta=0.0)
    assert loss.item() == pytest.approx(0.8)
    assert m["clip_low_frac"] == 1.0


def test_clip_higher_uses_its_own_bound():
    # DAPO clip-higher: ratio e, A = +1, clip_high 0.28 -> min(e, 1.28) = 1.28 -> loss -1.28
    loss, _ = _one(1.0, 0.0, None, 1.0, beta=0.0, clip_high=0.28)
    assert loss.item() == pytest.approx(-1.28)


def test_k3_kl_value_and_beta_weighting():
    # ref - logp = 1: k3 = e^1 - 1 - 1 = e - 2 = 0.71828; ratio 1 and A = 0 so pg = 0
    loss, m = _one(0.0, 0.0, 1.0, 0.0, beta=0.04)
    assert m["kl"] == pytest.approx(E - 2)
    assert m["kl_loss"] == pytest.approx(E - 2)
    assert loss.item() == pytest.approx(0.04 * (E - 2))
    # ref == logp: k3 = 1 - 0 - 1 = 0
    _, m0 = _one(0.3, 0.3, 0.3, 1.0)
    assert m0["kl"] == 0.0


def test_aggregation_modes_by_hand():
    # two sequences, per-token loss = -A * ratio with ratio 1 (no clip), A = (1, 2)
    # seq 0 has 1 token, seq 1 has 3 tokens, T = 4
    logp = torch.zeros(2, 4, dtype=torch.float64)
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.float64)
    adv = torch.tensor([1.0, 2.0], dtype=torch.float64)
    f = lambda agg, **kw: policy_loss(logp, logp, None, adv, mask, beta=0.0, agg=agg, **kw)[0].item()  # noqa: E731
    # seq-mean-token-mean: mean(-1/1, -6/3) = mean(-1, -2) = -1.5
    assert f("seq-mean-token-mean") == pytest.approx(-1.5)
    # token-mean: (-1 - 2 - 2 - 2) / 4 tokens = -7/4
    assert f("token-mean") == pytest.approx(-1.75)
    # Dr.GRPO sum-norm with norm 10: -7 / (2 seqs * 10) = -0.35; default norm is T = 4: -7/8
    assert f("seq-mean-token-sum-norm", norm=10) == pytest.approx(-0.35)
    assert f("seq-mean-token-sum-norm") == pytest.approx(-0.875)


def test_advantages_by_hand_use_unbiased_std():
    # group [1, 0]: mean 0.5, unbiased std sqrt(0.5) = 0.7071 -> +-0.5 / (0.7071 + 1e-4)
    a = group_advantages(torch.tensor([1.0, 0.0]), 2)
    assert a[0].item() == pytest.approx(0.5 / (math.sqrt(0.5) + 1e-4))
    assert a[1].item() == pytest.approx(-a[0].item())
    # Dr.GRPO: no std division, just centred
    b = group_advantages(torch.tensor([3.0, 1.0, 2.0]), 3, scale_by_std=False)
    assert b.tolist() == pytest.approx([1.0, -1.0, 0.0])


@pytest.mark.parametrize("eps", [0.0, 1e-12, 1e-4, 1.0])
def test_all_equal_groups_give_exact_zero(eps):
    r = torch.tensor([0.1, 0.1, 0.1, 0.7, 0.7, 0.7, 0.0, 1.0, 0.5])
    for scale in (True, False):
        a = group_advantages(r, 3, scale_by_std=scale, eps=eps)
        assert torch.isfinite(a).all()
        assert a[:6].tolist() == [0.0] * 6
        assert a[6].item() < 0 < a[7].item()
    assert group_advantages(torch.tensor([2.0, 5.0]), 1).tolist() == [0.0, 0.0]


# ---------------------------------------------------------------- naive loop
def _naive(logp, old, ref, adv, mask, cl, ch, beta, agg, norm):
    B, T = logp.shape
    per_seq, tok_sum, tok_n = [], 0.0, 0.0
    for i in range(B):
        s, n = 0.0, 0.0
        for t in range(T):
            if mask[i, t] == 0:
                continue
            ratio = math.exp(logp[i, t] - old[i, t])
            clipped = min(max(ratio, 1 - cl), 1 + ch)
            pg = -min(ratio * adv[i], clipped * adv[i])
            d = ref[i, t] - logp[i, t]
            kl = math.exp(d) - d - 1
            s += pg + beta * kl
            n += 1
        per_seq.append(s / max(n, 1.0))
        tok_sum += s
        tok_n += n
    if agg == "seq-mean-token-mean":
        return sum(per_seq) / B
    if agg == "token-mean":
        return tok_sum / max(tok_n, 1.0)
    return tok_sum / (B * norm)


def _random_batch(seed, B, T):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    old = logp + 0.4 * torch.randn(B, T, generator=g, dtype=torch.float64)
    ref = logp + 0.4 * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    lengths = torch.randint(0, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(torch.float64)
    return logp, old, ref, adv, mask


@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize("seed,B,T", [(0, 1, 1), (1, 3, 5), (2, 8, 17), (3, 16, 4), (4, 5, 32)])
def test_vectorised_equals_naive_loop(agg, seed, B, T):
    logp, old, ref, adv, mask = _random_batch(seed, B, T)
    cl, ch, beta, norm = 0.2, 0.28, 0.04, 50.0
    loss, _ = policy_loss(logp, old, ref, adv, mask, cl, ch, beta, agg, norm=norm)
    expected = _naive(logp, old, ref, adv.tolist(), mask, cl, ch, beta, agg, norm)
    assert loss.item() == pytest.approx(float(expected), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("seed,B,G", [(0, 2, 4), (1, 5, 3), (2, 1, 8), (3, 7, 2)])
def test_advantages_equal_naive_loop(seed, B, G):
    r = torch.rand(B * G, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    a = group_advantages(r, G)
    for b in range(B):
        grp = r[b * G:(b + 1) * G].tolist()
        mean = sum(grp) / G
        std = math.sqrt(sum((x - mean) ** 2 for x in grp) / (G - 1))
        for j in range(G):
            assert a[b * G + j].item() == pytest.approx((grp[j] - mean) / (std + 1e-4), rel=1e-9)


# ---------------------------------------------------------------- data parallel
@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize("seed", range(4))
def test_shard_losses_sum_to_whole_batch_loss(agg, seed):
    logp, old, ref, adv, mask = _random_batch(seed, 12, 9)
    whole, _ = policy_loss(logp, old, ref, adv, mask, agg=agg, norm=9)
    g = torch.Generator().manual_seed(100 + seed)
    cuts = sorted(torch.randperm(11, generator=g)[:3].add(1).tolist())  # 4 uneven shards
    bounds = list(zip([0] + cuts, cuts + [12]))
    dens = [loss_denominators(mask[a:b]) for a, b in bounds]
    g_tokens, g_seqs = sum(d[0] for d in dens), sum(d[1] for d in dens)
    total = sum(policy_loss(logp[a:b], old[a:b], ref[a:b], adv[a:b], mask[a:b], agg=agg, norm=9,
                            global_tokens=g_tokens, global_seqs=g_seqs)[0] for a, b in bounds)
    assert total.item() == pytest.approx(whole.item(), rel=1e-12, abs=1e-14)
    # without the global counts the per-shard means do NOT sum to the whole (token counts differ)
    naive = sum(policy_loss(logp[a:b], old[a:b], ref[a:b], adv[a:b], mask[a:b], agg=agg,
                            norm=9)[0] for a, b in bounds) / len(bounds)
    assert abs(naive.item() - whole.item()) > 1e-6


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_gradient_with_one_iteration_is_plain_policy_gradient_plus_kl(beta):
    logp0, _, ref, adv, mask = _random_batch(7, 6, 5)
    logp = logp0.clone().requires_grad_(True)
    loss, _ = policy_loss(logp, logp.detach(), ref, adv, mask, beta=beta)
    loss.backward()
    # ratio == 1, so no clip binds and d ratio / d logp = 1:
    # d loss / d logp[i,t] = m[i,t] / (B * n_i) * (-A_i + beta * (1 - exp(ref - logp)))
    n = mask.sum(-1).clamp(min=1.0)[:, None]
    expected = mask / (6 * n) * (-adv[:, None] + beta * (1 - torch.exp(ref - logp0)))
    assert torch.allclose(logp.grad, expected, rtol=1e-10, atol=1e-14)


def _reference(logits, tokens, temperature):
    """log-probs and entropy through autograd's full log-softmax, in float64."""
    full = torch.log_softmax(logits.double() / temperature, -1)
    return full.gather(-1, tokens[..., None]).squeeze(-1), -(full.exp() * full).sum(-1)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_entropy_and_gradients_equal_the_full_log_softmax(temperature):
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(5, 7, 11, generator=g)).requires_grad_()
    tokens = torch.randint(0, 11, (5, 7), generator=g)
    weights = torch.randn(5, 7, generator=g, dtype=torch.float64)  # an arbitrary upstream gradient
    ref, ref_ent = _reference(logits, tokens, temperature)
    (ref * weights).sum().backward()
    expected_grad, logits.grad = logits.grad.clone(), None
    for chunk in (1, 7, 16, 1000):  # positions at a time (35 here)
        got, ent = token_logprobs(logits, tokens, temperature, chunk=chunk, entropy=True)
        assert got.dtype == torch.float32 and not ent.requires_grad
        assert torch.allclose(got.double(), ref, atol=1e-6) and torch.allclose(ent.double(), ref_ent, atol=1e-5)
        (got * weights).sum().backward()
        assert torch.allclose(logits.grad, expected_grad, atol=1e-6), chunk
        logits.grad = None
    assert torch.equal(token_logprobs(logits, tokens, temperature, chunk=3), got)  # without entropy: the same
    assert token_logprobs(logits[:0], tokens[:0]).shape == (0, 7)


def test_token_logprobs_of_bf16_logits_keep_a_bf16_gradient_and_match_float32():
    """The learner's bf16 logits: the result is float32 (computed from the logits in float32), the
    gradient comes back in bf16, equal to autograd's through a float32 copy up to bf16 rounding."""
    g = torch.Generator().manual_seed(1)
    logits = (4 * torch.randn(3, 6, 50, generator=g)).bfloat16().requires_grad_()
    tokens = torch.randint(0, 50, (3, 6), generator=g)
    got = token_logprobs(logits, tokens, 0.9)
    got.sum().backward()
    fused = logits.grad
    logits.grad = None
    ref = torch.log_softmax(logits.float() / 0.9, -1).gather(-1, tokens[..., None]).squeeze(-1)
    ref.sum().backward()
    assert got.dtype == torch.float32 and torch.allclose(got, ref, atol=1e-5)
    assert fused.dtype == torch.bfloat16 and torch.allclose(fused.float(), logits.grad.float(), atol=1e-2, rtol=1e-2)


def test_bad_arguments_raise_clear_errors():
    x = torch.zeros(1, 1)
    with pytest.raises(ValueError, match="ref_logp is required"):
        policy_loss(x, x, None, torch.zeros(1), x + 1, beta=0.1)
    with pytest.raises(ValueError, match="unknown agg"):
        policy_loss(x, x, x, torch.zeros(1), x + 1, agg="mean")
    with pytest.raises(ValueError, match="G=3"):
        group_advantages(torch.zeros(4), 3)


# ---------------------------------------------------------------------------- off-policy correction
def test_dual_clip_bounds_a_stale_negative_advantage_token():
    # a token the engine sampled at log-prob -5 that the policy now gives log-prob -1: ratio e^4 = 54.6.
    # With A = -1, PPO's min() keeps ratio * |A| = 54.6 (this is what blows up at staleness 3);
    # the dual clip at c = 3 caps it at 3 * |A| = 3 and sends no gradient through that token.
    logp = torch.tensor([[-1.0]], requires_grad=True)
    behaviour, adv, mask = torch.tensor([[-5.0]]), torch.tensor([-1.0]), torch.ones(1, 1)
    plain, _ = policy_loss(logp, behaviour, None, adv, mask, beta=0.0)
    assert float(plain.detach()) == pytest.approx(math.exp(4.0))
    capped, m = policy_loss(logp, behaviour, None, adv, mask, beta=0.0, dual_clip=3.0)
    assert float(capped.detach()) == pytest.approx(3.0) and m["dual_clip_frac"] == 1.0
    capped.backward()
    assert float(logp.grad) == 0.0


def test_dual_clip_leaves_positive_advantages_and_small_ratios_alone():
    logp = torch.tensor([[-1.0, -1.0, -2.0]])
    old = torch.tensor([[-1.5, -5.0, -1.9]])  # ratios e^0.5, e^4, e^-0.1
    adv, mask = torch.tensor([1.0]), torch.ones(1, 3)
    a, _ = policy_loss(logp, old, None, adv, mask, beta=0.0)
    b, m = policy_loss(logp, old, None, adv, mask, beta=0.0, dual_clip=3.0)
    assert float(a) == float(b) and m["dual_clip_frac"] == 0.0  # A > 0: the PPO clip already binds
    neg = torch.tensor([-1.0])
    c, _ = policy_loss(logp, torch.tensor([[-1.2, -1.1, -1.9]]), None, neg, mask, beta=0.0)
    d, _ = policy_loss(logp, torch.tensor([[-1.2, -1.1, -1.9]]), None, neg, mask, beta=0.0, dual_clip=3.0)
    assert float(c) == float(d)  # ratios below c: unchanged


def test_importance_weights_truncate_mask_and_mismatch_kl_by_hand():
    prox = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    behaviour = torch.tensor([[0.0, -math.log(3.0), math.log(4.0), -0.1]])  # w = 1, 3, 1/4, e^0.1
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # the last token is padding
    w, m = importance_weights(prox, behaviour, mask, cap=2.0, mode="truncate")
    assert w[0].tolist() == pytest.approx([1.0, 2.0, 0.25, 0.0])
    assert m["is_max"] == pytest.approx(3.0) and m["is_guarded_frac"] == pytest.approx(1 / 3)
    assert m["is_mean"] == pytest.approx((1 + 3 + 0.25) / 3)
    # k3 = w - 1 - log w per token: 0, 2 - log 3, -0.75 + log 4
    assert m["mismatch_kl"] == pytest.approx((0 + 2 - math.log(3) + (-0.75 + math.log(4))) / 3)
    w, m = importance_weights(prox, behaviour, mask, cap=2.0, mode="mask")
    assert w[0].tolist() == pytest.approx([1.0, 0.0, 0.0, 0.0])  # 3 > 2 and 1/4 < 1/2 are dropped
    assert m["is_guarded_frac"] == pytest.approx(2 / 3)
    _, m = importance_weights(prox, prox, mask)
    assert m["mismatch_kl"] == 0.0 and m["is_mean"] == 1.0


def test_is_weight_scales_each_tokens_surrogate():
    logp = torch.tensor([[-1.0, -1.0]], requires_grad=True)
    adv, mask = torch.tensor([2.0]), torch.ones(1, 2)
    w = torch.tensor([[0.5, 2.0]])
    loss, _ = policy_loss(logp, logp.detach(), None, adv, mask, beta=0.0, is_weight=w)
    loss.backward()
    # ratio 1: surrogate per token -A * w = -1, -4; seq-mean-token-mean: (-1 - 4) / 2
    assert float(loss.detach()) == pytest.approx(-2.5)
    assert logp.grad[0].tolist() == pytest.approx([-0.5, -2.0])  # d/dlogp of -ratio * A * w / 2
