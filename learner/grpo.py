"""GRPO maths as pure tensor functions: advantages, token log-probs, the clipped policy loss.

Imports only torch and takes plain numbers, so it can be read in one sitting and tested exactly.
Shapes: ``B`` sequences (prompts x G completions, laid out group after group), ``T`` completion
tokens, ``V`` vocabulary. The learner (``learner/learner.py``) is the only caller in the system.

Data-parallel and micro-batched use: pass ``global_tokens`` / ``global_seqs`` (the counts over
the whole optimizer batch, e.g. all-reduced across ranks) and every shard's loss becomes its
share of the whole-batch loss, so the shard losses *sum* to the loss of the whole batch in every
aggregation mode (``loss_denominators`` gives a shard's counts).
"""
from __future__ import annotations

import torch

AGG_MODES = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")
IS_MODES = ("truncate", "mask", "none")


def group_advantages(rewards: torch.Tensor, group_size: int, scale_by_std: bool = True,
                     eps: float = 1e-4) -> torch.Tensor:
    """Group-relative advantages ``(r - mean_group) / (std_group + eps)``.

    ``rewards`` is ``[B*G]``, group after group. The std is the *unbiased* one (Bessel's
    correction, ``torch.std`` default), as TRL's GRPOTrainer computes it and VLM-R1 inherits;
    with ``scale_by_std=False`` there is no division (Dr.GRPO). A group whose rewards are all
    equal carries no signal: its advantages are exactly 0 (no NaN for any ``eps``, including 0,
    and no ``1e-17 / eps`` round-off). A group of one sample has advantage 0 for the same reason.

    >>> group_advantages(torch.tensor([1., 0., 1., 1.]), group_size=2)
    tensor([ 0.7070, -0.7070,  0.0000,  0.0000])
    """
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be [B*G] with G={group_size}, got {tuple(rewards.shape)}")
    r = rewards.view(-1, group_size).to(torch.float64)  # [B, G]; float64: exact group means
    centred = r - r.mean(dim=1, keepdim=True)
    flat = (r.max(dim=1, keepdim=True).values == r.min(dim=1, keepdim=True).values)  # [B, 1]
    if scale_by_std and group_size > 1:
        centred = centred / (r.std(dim=1, keepdim=True) + eps)
    centred = torch.where(flat, torch.zeros_like(centred), centred)
    return centred.reshape(-1).to(rewards.dtype)


class _SelectedLogprobs(torch.autograd.Function):
    """``log softmax(logits / temperature)[token]`` (and, without gradient, the entropy) over ``[N, V]``
    logits, ``chunk`` positions at a time, keeping nothing of vocabulary size but the logits
    themselves for the backward pass.

    Autograd through ``logits.float() / temperature`` then ``logsumexp`` keeps a float32 copy of
    every logit for the backward pass (twice the bf16 logits) and, with the entropy, computes a
    second full log-softmax. Here the forward keeps only each position's log-normaliser (``[N]``),
    and the backward recomputes the softmax chunk by chunk:
    ``d logp / d logits = (onehot(token) - softmax) / temperature``. The temporaries are a chunk's:
    ``chunk x V`` floats, whatever the batch and sequence length.
    """

    @staticmethod
    def forward(ctx, logits, tokens, temperature, chunk, want_entropy):
        lse = logits.new_empty(tokens.shape, dtype=torch.float32)
        logp = torch.empty_like(lse)
        ent = torch.empty_like(lse) if want_entropy else None
        for i in range(0, logits.shape[0], chunk):
            x = logits[i:i + chunk].to(torch.float32, copy=True).div_(temperature)  # [n, V]
            z = torch.logsumexp(x, dim=-1)
            lse[i:i + chunk] = z
            logp[i:i + chunk] = x.gather(-1, tokens[i:i + chunk].unsqueeze(-1)).squeeze(-1) - z
            if want_entropy:  # H = -sum p log p (not log Z - sum p x: that cancels where p is peaked)
                lp = x.sub_(z.unsqueeze(-1))
                ent[i:i + chunk] = -lp.exp().mul_(lp).sum(-1)
        ctx.save_for_backward(logits, tokens, lse)
        ctx.temperature, ctx.chunk = temperature, chunk
        ent = lse.new_zeros(()) if ent is None else ent  # (autograd needs a tensor in its place)
        ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    def backward(ctx, grad_logp, _grad_ent):
        logits, tokens, lse = ctx.saved_tensors
        t, chunk = ctx.temperature, ctx.chunk
        grad = torch.empty_like(logits)
        for i in range(0, logits.shape[0], chunk):
            g = grad_logp[i:i + chunk].float().unsqueeze(-1)  # [n, 1]
            d = logits[i:i + chunk].to(torch.float32, copy=True).div_(t).sub_(lse[i:i + chunk].unsqueeze(-1)).exp_()
            d.mul_(-g).scatter_add_(-1, tokens[i:i + chunk].unsqueeze(-1), g)
            grad[i:i + chunk] = d.div_(t)
        return grad, None, None, None, None


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0, chunk: int = 512,
                   entropy: bool = False):
    """``log softmax(logits / temperature)[..., token]`` at each position: ``[B, T, V], [B, T] -> [B, T]``,
    float32 and differentiable with respect to ``logits``; with ``entropy=True`` the pair
    ``(logp, entropy of each position's distribution)``, the entropy without gradient.

    ``logits[:, t]`` must be the logits that predict ``tokens[:, t]`` (the caller shifts). Works
    ``chunk`` positions at a time in float32 and keeps for the backward pass only the logits as
    given (bf16 stays bf16) and one float per position: no float32 copy of the batch's logits is
    made, in the forward or the backward pass (``python -m bench.logprobs`` measures the difference).
    """
    flat = logits.reshape(-1, logits.shape[-1])  # (a view of the model's contiguous logits)
    logp, ent = _SelectedLogprobs.apply(flat, tokens.reshape(-1), float(temperature), chunk, entropy)
    logp = logp.view(tokens.shape)
    return (logp, ent.view(tokens.shape)) if entropy else logp


def loss_denominators(mask: torch.Tensor) -> tuple[float, int]:
    """A shard's ``(tokens, sequences)``; sum them over shards for ``global_*`` arguments."""
    return float(mask.sum().item()), int(mask.shape[0])


def _aggregate(x: torch.Tensor, mask: torch.Tensor, agg: str, norm: float,
               global_tokens: float | None, global_seqs: int | None) -> torch.Tensor:
    """Reduce per-token values ``[B, T]`` to a scalar under ``agg``; see ``policy_loss``."""
    seqs = global_seqs if global_seqs is not None else mask.shape[0]
    if agg == "seq-mean-token-mean":
        per_seq = (x * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)  # [B]
        return per_seq.sum() / max(seqs, 1)
    if agg == "token-mean":
        tokens = global_tokens if global_tokens is not None else mask.sum()
        return (x * mask).sum() / max(float(tokens), 1.0)
    if agg == "seq-mean-token-sum-norm":
        return (x * mask).sum() / (max(seqs, 1) * norm)
    raise ValueError(f"unknown agg {agg!r}; use one of {AGG_MODES}")


def importance_weights(prox_logp: torch.Tensor, behaviour_logp: torch.Tensor, mask: torch.Tensor,
                       cap: float = 2.0, mode: str = "truncate") -> tuple[torch.Tensor, dict[str, float]]:
    """Per-token importance weights ``w = pi_prox / mu`` of the behaviour policy ``mu`` (the
    rollout engine's log-probs) against ``pi_prox``, guarded, and their statistics. ``[B, T]``.

    ``mode="truncate"``: ``w = min(w, cap)`` (truncated IS, Yao et al. 2025); ``"mask"``: tokens
    with ``w`` outside ``[1/cap, cap]`` get weight 0 (IcePop); ``"none"``: ``w`` as is. The result
    carries no gradient. Metrics: ``is_mean`` / ``is_max`` (before the guard), ``is_guarded_frac``
    (tokens truncated or masked) and ``mismatch_kl``, the k3 estimate of KL(mu || pi_prox) from
    mu's own samples (``w - 1 - log w``, >= 0, 0 when engine and learner agree).

    >>> w, m = importance_weights(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, -2.0]]), torch.ones(1, 2))
    >>> w  # e^0 = 1 is kept; e^2 = 7.39 is truncated to 2
    tensor([[1., 2.]])
    >>> round(m["is_guarded_frac"], 2), round(m["is_max"], 2)
    (0.5, 7.39)
    """
    if mode not in IS_MODES:
        raise ValueError(f"unknown importance-weight guard {mode!r}; use one of {IS_MODES}")
    with torch.no_grad():
        log_w = (prox_logp - behaviour_logp).float()  # [B, T]
        w = torch.exp(log_w)
        if mode == "truncate":
            guarded = w > cap
            out = w.clamp(max=cap)
        elif mode == "mask":
            guarded = (w > cap) | (w < 1.0 / cap)
            out = torch.where(guarded, torch.zeros_like(w), w)
        else:
            guarded, out = torch.zeros_like(w, dtype=torch.bool), w
        m = mask.float()
        n = m.sum().clamp(min=1.0)
        metrics = {"is_mean": float((w * m).sum() / n), "is_max": float((w * m).max()) if m.any() else 1.0,
                   "is_guarded_frac": float((guarded.float() * m).sum() / n),
                   "mismatch_kl": float(((w - 1.0 - log_w) * m).sum() / n)}
    return out * m, metrics


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None,
                advantages: torch.Tensor, mask: torch.Tensor, clip_low: float = 0.2,
                clip_high: float = 0.2, beta: float = 0.04, agg: str = "seq-mean-token-mean",
                norm: float | None = None, global_tokens: float | None = None,
                global_seqs: int | None = None, is_weight: torch.Tensor | None = None,
                dual_clip: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO's clipped surrogate plus ``beta`` times the k3 KL to the reference policy.

    Per token: ``ratio = exp(logp - old_logp)``,
    ``pg = -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A)``,
    ``kl = exp(ref - logp) - (ref - logp) - 1`` (k3, >= 0), ``loss_tok = pg + beta * kl``.
    Inputs are ``[B, T]`` except ``advantages`` ``[B]``; ``mask`` is 1 on completion tokens.

    Off-policy use: ``old_logp`` is the anchor of the ratio -- the learner's own log-probs
    on-policy, the engine's behaviour log-probs in "bypass" mode, a recomputed proximal policy in
    "decoupled" mode, where ``is_weight`` (``[B, T]``, from ``importance_weights``) multiplies
    each token's surrogate. ``dual_clip`` = c caps a negative-advantage token's surrogate at
    ``c * |A|``: PPO's min() leaves ``ratio * |A|`` unbounded there, which is how a stale or
    mismatched sample with a large ratio blows up an update (dual-clip PPO, Ye et al. 2020).

    ``agg`` (how tokens become one number):
    - ``"seq-mean-token-mean"``: mean over each sequence's tokens, then over sequences (TRL/VLM-R1);
    - ``"token-mean"``: mean over all tokens of the batch (DAPO);
    - ``"seq-mean-token-sum-norm"``: token sum / (sequences * ``norm``), ``norm`` a constant such
      as the maximum completion length (Dr.GRPO); defaults to ``T``.

    Returns ``(loss, metrics)``; metrics are floats: ``kl`` (token mean), ``clip_low_frac`` /
    ``clip_high_frac`` (tokens where the lower / upper clip binds: ratio below 1 - clip_low with
    A < 0, above 1 + clip_high with A > 0), ``ratio_mean``, ``pg_loss`` and ``kl_loss`` (the two
    parts, aggregated like the loss; ``loss = pg_loss + beta * kl_loss``).
    """
    if ref_logp is None and beta != 0:
        raise ValueError("ref_logp is required when beta != 0")
    mask = mask.to(logp.dtype)
    adv = advantages.to(logp.dtype).unsqueeze(-1)  # [B, 1]
    ratio = torch.exp(logp - old_logp)  # [B, T]
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    pg_tok = -torch.minimum(ratio * adv, clipped * adv)  # [B, T]
    if dual_clip is not None:
        pg_tok = torch.where(adv < 0, torch.minimum(pg_tok, -dual_clip * adv), pg_tok)
    if is_weight is not None:
        pg_tok = pg_tok * is_weight.detach().to(pg_tok.dtype)
    norm = float(norm if norm is not None else mask.shape[-1])
    reduce = lambda x: _aggregate(x, mask, agg, norm, global_tokens, global_seqs)  # noqa: E731
    pg = reduce(pg_tok)
    if beta != 0:
        delta = ref_logp - logp
        kl_tok = torch.exp(delta) - delta - 1.0  # [B, T]
        kl = reduce(kl_tok)
        loss = pg + beta * kl
    else:
        kl_tok, kl, loss = None, torch.zeros((), dtype=logp.dtype), pg
    with torch.no_grad():
        n = mask.sum().clamp(min=1.0)
        low = ((ratio < 1.0 - clip_low) & (adv < 0)).to(mask.dtype)
        high = ((ratio > 1.0 + clip_high) & (adv > 0)).to(mask.dtype)
        metrics = {
            "kl": float((kl_tok * mask).sum() / n) if kl_tok is not None else 0.0,
            "clip_low_frac": float((low * mask).sum() / n),
            "clip_high_frac": float((high * mask).sum() / n),
            "ratio_mean": float((ratio * mask).sum() / n),
            "dual_clip_frac": float((((ratio > dual_clip) & (adv < 0)).to(mask.dtype) * mask).sum() / n)
            if dual_clip is not None else 0.0,
            "pg_loss": float(pg),
            "kl_loss": float(kl),
        }
    return loss, metrics
