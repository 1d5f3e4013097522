"""The weight wire protocol, both ends: the learner's rank 0 sends, every engine worker receives.

    sender = WeightSender(host, port, world_size)      # learner rank 0, once
    sender.send(named_tensors)                         # per update, in the agreed order
    for name, t in receive_packs(group, meta, device)  # engine side, the same order

Protocol: rank 0 of the learner creates a TCPStore (listening on its own address only) and a
process group (gloo on CPU, NCCL on GPU) with every engine worker, once (``weights.net``). Per
update the list of ``(name, dtype, shape)`` travels through Ray, then each tensor is broadcast in
that order, in packs of up to ``PACK_BYTES`` or one by one. With delta sync only the elements that
changed travel (``DeltaEncoder`` / ``apply_delta``), and every Nth update is sent in full. Names
are the transformers ``state_dict`` names, which vLLM's loader maps itself.
"""
from __future__ import annotations

import datetime
import math

import torch
import torch.distributed as dist

from weights.net import gloo_group, tcp_store


class WeightSender:
    """Rank 0 of the weight group (``world_size`` = 1 + number of engine workers). Tensors travel in
    packs of up to ``pack_bytes`` (``wire_packs``: one broadcast per pack), or one broadcast per
    tensor with ``pack_bytes=0`` (``rollout.sync_pack_mb``: auto is 0 with gloo, 64 MB with NCCL)."""

    def __init__(self, host: str, port: int, world_size: int, backend: str = "gloo", timeout_s: float = 600.0,
                 pack_bytes: int | None = None):
        self.pack_bytes = PACK_BYTES if pack_bytes is None else pack_bytes
        self.store = tcp_store(host, port, is_master=True, timeout_s=timeout_s)
        self.host, self.world_size, self.backend = host, world_size, backend
        self.group = None
        self.timeout = datetime.timedelta(seconds=timeout_s)

    def connect(self) -> None:
        """Join the group (blocks until every engine worker has joined too)."""
        if self.backend == "gloo":
            self.group = gloo_group(self.store, 0, self.world_size, self.timeout, self.host)
        else:
            self.group = dist.ProcessGroupNCCL(self.store, 0, self.world_size)

    def send(self, tensors: list[torch.Tensor]) -> int:
        """Queue ``tensors`` (the next ones in ``meta`` order) for the wire: copied into a pack
        buffer, or (alone in their pack) sent and waited for, so the caller may free or re-partition
        them on return. Returns the bytes queued. ``finish`` ends the update."""
        if not hasattr(self, "_packer"):
            self._packer = Packer(self.group, self.pack_bytes)
        return self._packer.add(tensors)

    def send_header(self, header: torch.Tensor) -> None:
        """Broadcast a delta update's header (before any of its tensors) and wait for it."""
        self.group.broadcast(header, 0).wait()

    def finish(self) -> None:
        """Send what is still packed and wait until every buffer of this update is on the wire."""
        if hasattr(self, "_packer"):
            self._packer.finish()


PACK_BYTES = 64 * 2**20  # wire buffer: tensors travel in consecutive packs of at most this many bytes


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def _nbytes(dtype: torch.dtype, shape) -> int:
    return math.prod(int(d) for d in shape) * _itemsize(dtype)


def wire_packs(meta, limit: int = PACK_BYTES) -> list[list[int]]:
    """Indices of ``meta`` entries ``(name, dtype, shape)`` in the packs they travel in: consecutive,
    one dtype each, at most ``limit`` bytes unless one tensor alone is larger. Sender and receivers
    derive the same packs from the same meta.

    >>> wire_packs([("a", "float32", (4,)), ("b", "float32", (4,)), ("c", "bfloat16", (2,)), ("d", "float32", (9,))], 32)
    [[0, 1], [2], [3]]
    """
    packs, cur, size, cur_dtype = [], [], 0, None
    for i, (_, dtype, shape) in enumerate(meta):
        n = _nbytes(getattr(torch, dtype), shape)
        if cur and (dtype != cur_dtype or size + n > limit):
            packs.append(cur)
            cur, size = [], 0
        cur.append(i)
        size, cur_dtype = size + n, dtype
    if cur:
        packs.append(cur)
    return packs


class Packer:
    """Sender side of ``wire_packs``: copies tensors into one of two pack buffers and broadcasts a
    buffer when the next tensor would not fit, so one pack is in flight while the next is filled.
    One gloo/NCCL call per pack instead of one per tensor. ``limit=0``: every tensor is sent as it
    is (one call each), as before packing."""

    def __init__(self, group, limit: int = PACK_BYTES):
        self.group, self.limit = group, limit
        self.buffers: dict = {}  # (dtype, device, slot) -> flat buffer of limit bytes
        self.inflight: list = []  # (work, slot) oldest first
        self.slot, self.offset, self.dtype, self.device = 0, 0, None, None

    def add(self, tensors) -> int:
        nbytes, alone = 0, []
        for t in tensors:
            t = t.detach()
            n = t.numel() * t.element_size()
            nbytes += n
            if self.offset and (t.dtype != self.dtype or self.offset + n > self.limit):
                self._flush()
            if n > self.limit:  # alone in its pack: sent as it is, waited for before returning (the caller may free it)
                t = t.contiguous()
                alone.append((self.group.broadcast(t, 0), t))
                continue
            buf = self._buffer(t.dtype, t.device)
            k = self.offset // t.element_size()
            buf[k:k + t.numel()].copy_(t.reshape(-1))
            self.offset += n
        for work, _ in alone:
            work.wait()
        return nbytes

    def _buffer(self, dtype, device):
        if self.offset == 0:  # a new pack: its slot's previous pack must have left
            self.dtype, self.device = dtype, device
            while self.inflight and self.inflight[0][1] == self.slot:
                self.inflight.pop(0)[0].wait()
        key = (dtype, device, self.slot)
        if key not in self.buffers:
            self.buffers[key] = torch.empty(self.limit // _itemsize(dtype), dtype=dtype, device=device)
        return self.buffers[key]

    def _flush(self) -> None:
        if not self.offset:
            return
        buf = self.buffers[(self.dtype, self.device, self.slot)]
        self.inflight.append((self.group.broadcast(buf[:self.offset // buf.element_size()], 0), self.slot))
        self.slot, self.offset = 1 - self.slot, 0

    def finish(self) -> None:
        self._flush()
        while self.inflight:
            self.inflight.pop(0)[0].wait()


def receive_packs(group, meta, device, limit: int = PACK_BYTES):
    """Receiver side of ``wire_packs``: yields ``(name, tensor)`` in ``meta`` order (views of the
    pack buffer), with the next pack already being received while the caller loads this one.
    ``wait_s`` of the returned generator's ``timing`` dict is the time spent waiting on the wire."""
    timing = {"wait_s": 0.0}

    def start(pack):
        dtype = getattr(torch, meta[pack[0]][1])
        flat = torch.empty(sum(math.prod(meta[i][2]) for i in pack), dtype=dtype, device=device)
        return flat, group.broadcast(flat, 0)

    def gen():
        import time
        packs = wire_packs(meta, limit)
        nxt = start(packs[0]) if packs else None
        for k, pack in enumerate(packs):
            flat, work = nxt
            t0 = time.perf_counter()
            work.wait()
            timing["wait_s"] += time.perf_counter() - t0
            if k + 1 < len(packs):
                nxt = start(packs[k + 1])
            off = 0
            for i in pack:
                name, _, shape = meta[i]
                n = math.prod(shape)
                yield name, flat[off:off + n].view(tuple(shape))
                off += n

    return gen(), timing


def buckets(named, limit_bytes: float, numel):
    """Consecutive groups of ``(name, param, ...)`` items of about ``limit_bytes`` (fp32 sizes), so
    that ZeRO-3 gathers, and the copies sent or saved, stay bounded in memory."""
    bucket, size = [], 0.0
    for item in named:
        bucket.append(item)
        size += numel(item[1]) * 4
        if size >= limit_bytes:
            yield bucket
            bucket, size = [], 0.0
    if bucket:
        yield bucket


# ---------------------------------------------------------------------------- delta sync
# With ``rollout.sync_delta``, an update announces per tensor how it travels (one int64 header
# broadcast: -1 dense, n > 0 sparse with n changed elements, 0 unchanged) and then sends, in meta
# order, a dense tensor or its changed elements' flat indices (int32) and values. Both sides
# derive the same wire layout (``delta_wire_meta``) and packs (``wire_packs``) from it. The engine
# keeps a copy of what it was sent (its base) to apply the changes to.
DENSE, UNCHANGED = -1, 0


def delta_wire_meta(meta, counts) -> list[tuple[str, str, tuple[int, ...]]]:
    """The tensors an update puts on the wire, in order, from the header ``counts``.

    >>> delta_wire_meta([("a", "bfloat16", (4, 4)), ("b", "bfloat16", (8,)), ("c", "bfloat16", (2,))], [-1, 3, 0])
    [('a', 'bfloat16', (4, 4)), ('b#idx', 'int32', (3,)), ('b#val', 'bfloat16', (3,))]
    """
    out = []
    for (name, dtype, shape), n in zip(meta, counts):
        if n == DENSE:
            out.append((name, dtype, tuple(shape)))
        elif n > 0:
            out += [(f"{name}#idx", "int32", (n,)), (f"{name}#val", dtype, (n,))]
    return out


class DeltaEncoder:
    """Learner side: what the engines hold (the values last sent, in the sync dtype), to send each
    tensor as its changed elements when that is smaller than the tensor, and in full every
    ``full_every`` updates (and after ``reset``: a new group, a replaced engine)."""

    def __init__(self, full_every: int = 10):
        self.full_every, self.base, self.updates, self.force_full = max(1, int(full_every)), {}, 0, True

    def reset(self) -> None:
        """A new group: the engines hold nothing the next update can build on. The base is kept
        (it is still what the last sync sent, which ``resend_weights`` may need)."""
        self.updates, self.force_full = 0, True

    def full_due(self) -> bool:
        return self.force_full or not self.base or self.updates % self.full_every == 0

    def sent(self) -> None:
        """An update went out."""
        self.updates, self.force_full = self.updates + 1, False

    def encode(self, name: str, cur: torch.Tensor, full: bool) -> tuple[int, list[torch.Tensor]]:
        """(header count, tensors to send) for ``cur``; the base becomes ``cur``."""
        base = self.base.get(name)
        if full or base is None or base.shape != cur.shape or cur.numel() >= 2**31:
            self.base[name] = cur.detach().clone()
            return DENSE, [self.base[name]]
        flat_cur, flat_base = cur.reshape(-1), base.view(-1)
        # compare the bits (a NaN equals itself, -0.0 differs from 0.0): the engine gets exactly these values
        bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[cur.element_size()]
        idx = (flat_cur.view(bits) != flat_base.view(bits)).nonzero().reshape(-1)
        n = idx.numel()
        if n == 0:
            return UNCHANGED, []
        if n * (4 + cur.element_size()) >= cur.numel() * cur.element_size():  # sparse is no smaller
            base.copy_(cur)
            return DENSE, [base]
        vals = flat_cur[idx]
        flat_base[idx] = vals
        return n, [idx.to(torch.int32), vals]

    def digest(self, names) -> str:
        return tensor_digest((n, self.base[n]) for n in names)


def tensor_digest(named) -> str:
    """sha256 over the bytes of ``(name, tensor)`` pairs, in order: equal iff bit-identical."""
    import hashlib
    h = hashlib.sha256()
    for name, t in named:
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def apply_delta(base: dict, meta, counts, received) -> list[str]:
    """Engine side: fold an update's ``received`` ``(wire name, tensor)`` pairs (in
    ``delta_wire_meta`` order) into ``base`` (name -> tensor); returns the names it changed."""
    it = iter(received)
    changed = []
    for (name, _, _), n in zip(meta, counts):
        if n == DENSE:
            _, t = next(it)
            if name in base and base[name].shape == t.shape:
                base[name].copy_(t)
            else:
                base[name] = t.clone()
        elif n > 0:
            if name not in base:
                raise RuntimeError(f"weight sync: a delta for {name} arrived before any full weights "
                                   f"(the learner and this engine disagree about the last sync)")
            (_, idx), (_, vals) = next(it), next(it)
            base[name].view(-1)[idx.long()] = vals
        else:
            continue
        changed.append(name)
    return changed
