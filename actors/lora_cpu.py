"""Fast CPU LoRA kernels for the case RL runs: every token of a batch uses the same adapter.

vLLM's CPU LoRA ops (``vllm.lora.ops.torch_ops``) serve many adapters at once by gathering each
token's adapter weights (``weights[indices]``: one copy of the adapter per token) before a batched
einsum. With one policy adapter, that copy is the whole cost: decode ran 20x slower than the base
model (``python -m bench.lora_sync``). ``install()`` replaces the decode (bgmv) and prefill (sgmv)
ops: when every token has the same adapter, the op is one matrix product with it, the same
arithmetic without the per-token copy; any other batch goes to vLLM's op unchanged. It runs
inside the engine's worker process.
"""
from __future__ import annotations

import weakref

import torch

_NAMES = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice", "sgmv_shrink", "sgmv_expand", "sgmv_expand_slice")
_CAST: dict = {}  # (id of the stacked weights, index, dtype) -> (weakref, version, cast copy)


def _adapter(weights: torch.Tensor, indices: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """The one ``[out, in]`` adapter every token uses, in ``dtype``, or None if tokens use
    different ones. Casts are kept until the stacked weights change (a new adapter is copied in
    place, which bumps the tensor's version): the shrink op computes in fp32 from bf16 adapters,
    and casting the adapter at every call was a large part of its cost."""
    if indices.numel() == 0 or not bool((indices == indices[0]).all()):
        return None
    k = int(indices[0])  # (a negative index wraps, as in the gathering op)
    key = (id(weights), k, dtype)
    hit = _CAST.get(key)
    if hit is not None and hit[0]() is weights and hit[1] == weights._version:
        return hit[2]
    for stale in [c for c, v in _CAST.items() if v[0]() is None]:  # weights freed: drop their casts
        del _CAST[stale]
    w = weights[k]
    w = (w.squeeze(0) if w.dim() == 3 else w).to(dtype)
    _CAST[key] = (weakref.ref(weights), weights._version, w)
    return w


def _per_sequence(lora_indices: torch.Tensor, seq_lens: torch.Tensor) -> torch.Tensor:
    """Token indices of a prefill batch, for the check only: every sequence's index when they
    are all equal (then every token has it), else the exploded per-token indices."""
    if lora_indices.numel() and bool((lora_indices == lora_indices[0]).all()):
        return lora_indices
    return torch.repeat_interleave(lora_indices, seq_lens)


def shrink(inputs, weights, output, indices, scaling: float = 1.0):
    w = _adapter(weights, indices, output.dtype)
    if w is None:
        return _vllm("bgmv_shrink")(inputs, weights, output, indices, scaling)
    out = inputs.to(output.dtype) @ w.t()
    output[:, :out.shape[1]] = scaling * out


def expand(inputs, weights, output, indices, add_inputs: bool = True):
    w = _adapter(weights, indices, output.dtype)
    if w is None:
        return _vllm("bgmv_expand")(inputs, weights, output, indices, add_inputs)
    out = inputs.to(output.dtype) @ w.t()
    limit = 1 if out.shape[0] == 1 and output.shape[0] != 1 else output.shape[0]
    n = min(out.shape[1], output.shape[1])  # adapter and model may pad differently
    if add_inputs:
        output[:, :n] += out[:limit, :n]
    else:
        output[:, :n] = out[:limit, :n]


def expand_slice(inputs, weights, output, indices, slice_offset: int, slice_size: int, add_inputs: bool = True):
    w = _adapter(weights, indices, output.dtype)
    if w is None:
        return _vllm("bgmv_expand_slice")(inputs, weights, output, indices, slice_offset, slice_size, add_inputs)
    out = inputs.to(output.dtype) @ w.t()
    if add_inputs:
        output[:, slice_offset:slice_offset + slice_size] += out
    else:
        output[:, slice_offset:slice_offset + slice_size] = out


# the prefill (sgmv) ops: vLLM's explode the per-sequence indices to per-token ones, then gather
def sgmv_shrink(inputs, weights, output, b_seq_start_loc, seq_len_tensor, lora_indices_tensor, batches,
                max_seq_length, token_nums, scaling):
    shrink(inputs, weights, output, _per_sequence(lora_indices_tensor, seq_len_tensor), scaling)


def sgmv_expand(inputs, weights, output, b_seq_start_loc, seq_len_tensor, lora_indices_tensor, batches,
                max_seq_length, token_nums, add_inputs=False):
    expand(inputs, weights, output, _per_sequence(lora_indices_tensor, seq_len_tensor), add_inputs)


def sgmv_expand_slice(inputs, weights, output, b_seq_start_loc, seq_len_tensor, lora_indices_tensor, batches,
                      max_seq_length, token_nums, slice_offset, slice_size, add_inputs=False):
    expand_slice(inputs, weights, output, _per_sequence(lora_indices_tensor, seq_len_tensor), slice_offset,
                 slice_size, add_inputs)


_GENERIC: dict = {}  # vLLM's own ops, for batches that mix adapters


def _vllm(name: str):
    if name not in _GENERIC:  # (before install(): the module still holds vLLM's)
        from vllm.lora.ops.torch_ops import lora_ops
        _GENERIC[name] = getattr(lora_ops, name)
    return _GENERIC[name]


_FAST = {"bgmv_shrink": shrink, "bgmv_expand": expand, "bgmv_expand_slice": expand_slice,
         "sgmv_shrink": sgmv_shrink, "sgmv_expand": sgmv_expand, "sgmv_expand_slice": sgmv_expand_slice}


def install() -> bool:
    """Route vLLM's CPU LoRA ops through the one-adapter fast path (idempotent); False when this
    vLLM has no such ops (a GPU build uses its own kernels and is left alone)."""
    try:
        from vllm.lora.ops.torch_ops import lora_ops
        from vllm.lora.punica_wrapper import punica_cpu
    except ImportError:
        return False
    if not all(hasattr(lora_ops, n) for n in _NAMES):
        return False
    for name in _NAMES:
        if getattr(lora_ops, name) is not _FAST[name]:
            _GENERIC[name] = getattr(lora_ops, name)
        # punica_cpu imported them by name
        setattr(lora_ops, name, _FAST[name])
        if hasattr(punica_cpu, name):
            setattr(punica_cpu, name, _FAST[name])
    return True
