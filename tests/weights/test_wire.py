"""Packed weight transfer over a real gloo group (two ranks, two threads): every tensor arrives
bit-exact and in order, one broadcast per pack, whatever the dtypes and sizes."""
import datetime
import threading

import pytest
import torch

from weights.net import free_port, gloo_group, tcp_store

from weights.wire import Packer, receive_packs, wire_packs


class Counting:
    """A process group that counts its broadcasts (and forwards them)."""

    def __init__(self, group):
        self.group, self.calls = group, 0

    def broadcast(self, t, root):
        self.calls += 1
        return self.group.broadcast(t, root)


def _pair():
    port, timeout = free_port(), datetime.timedelta(seconds=60)
    groups = [None, None]

    def join(rank):
        store = tcp_store("127.0.0.1", port, is_master=rank == 0, timeout_s=60)
        groups[rank] = gloo_group(store, rank, 2, timeout, "127.0.0.1")
    threads = [threading.Thread(target=join, args=(r,)) for r in (0, 1)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    return groups


@pytest.mark.parametrize("limit", [4096, 0])  # bytes; 0: one broadcast per tensor (rollout.sync_pack_mb=0)
def test_packs_arrive_bit_exact_in_order_with_one_broadcast_per_pack(limit):
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 5), (7,), (64, 64), (2, 2, 2), (300, 40), (1,), (5, 9), (11, 13)]
    dtypes = ["bfloat16", "bfloat16", "bfloat16", "float32", "bfloat16", "bfloat16", "float32", "float32"]
    tensors = [torch.randn(s, generator=g).to(getattr(torch, d)) for s, d in zip(shapes, dtypes)]
    meta = [(f"w{i}", d, s) for i, (s, d) in enumerate(zip(shapes, dtypes))]
    packs = wire_packs(meta, limit)
    assert [i for p in packs for i in p] == list(range(len(meta)))
    assert [2] in packs and [4] in packs  # (64, 64) and (300, 40) in bf16 are more than 4096 bytes: alone
    assert packs == ([[0, 1], [2], [3], [4], [5], [6, 7]] if limit else [[i] for i in range(len(meta))])  # dtype splits too
    send_g, recv_g = (Counting(x) for x in _pair())
    out = {}

    def receive():
        items, timing = receive_packs(recv_g, meta, torch.device("cpu"), limit)
        out["items"] = [(n, t.clone()) for n, t in items]
        out["wait"] = timing["wait_s"]
    t = threading.Thread(target=receive)
    t.start()
    packer = Packer(send_g, limit)
    for bucket in (tensors[:3], tensors[3:5], tensors[5:]):  # the learner's buckets, not aligned with packs
        copies = [x.clone() for x in bucket]
        assert packer.add(copies) == sum(x.numel() * x.element_size() for x in bucket)
        for c in copies:
            c.fill_(float("nan"))  # the caller frees / re-partitions its tensors once add returns
    packer.finish()
    t.join(timeout=60)
    assert [n for n, _ in out["items"]] == [m[0] for m in meta]
    for (_, got), want in zip(out["items"], tensors):
        assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want)
    assert send_g.calls == recv_g.calls == len(packs) and out["wait"] >= 0


@pytest.mark.parametrize("limit", [4096, 0])
def test_delta_updates_rebuild_the_senders_weights_bit_exact_in_fewer_bytes(limit):
    """Delta sync over a real gloo pair: a dense first update, then only changed elements (a NaN,
    -0.0 and a tensor that changed everywhere included), a periodic full one; after every update
    the receiver's copy is bit-identical to the sender's, and sparse updates put fewer bytes on the wire."""
    from weights.wire import DENSE, UNCHANGED, DeltaEncoder, apply_delta, delta_wire_meta, tensor_digest
    g = torch.Generator().manual_seed(0)
    shapes = [(64, 64), (300,), (8, 8), (5,)]
    weights = {f"w{i}": torch.randn(s, generator=g).to(torch.bfloat16) for i, s in enumerate(shapes)}
    meta = [(n, "bfloat16", tuple(t.shape)) for n, t in weights.items()]
    send_g, recv_g = _pair()
    enc, base = DeltaEncoder(full_every=3), {}
    expect = [[DENSE] * 4, [3, UNCHANGED, DENSE, 1], [2, UNCHANGED, UNCHANGED, UNCHANGED], [DENSE] * 4]
    for update, want in enumerate(expect):
        if update == 1:
            weights["w0"].view(-1)[[5, 9, 4000]] += 1.0
            weights["w2"] += 0.5                          # every element: dense is smaller
            weights["w3"][2] = float("nan")
        if update == 2:
            weights["w0"].view(-1)[7] = -0.0 if weights["w0"].view(-1)[7] == 0 else 0.0
            weights["w0"].view(-1)[11] *= -1
        full = enc.full_due()
        counts, pieces = [], []
        for name, t in weights.items():
            n, parts = enc.encode(name, t, full)
            counts.append(n)
            pieces.append(parts)
        enc.sent()
        assert counts == want, (update, counts)
        got = {}

        def receive():
            header = torch.empty(len(meta), dtype=torch.int64)
            recv_g.broadcast(header, 0).wait()
            items, _ = receive_packs(recv_g, delta_wire_meta(meta, header.tolist()), torch.device("cpu"), limit)
            got["changed"] = apply_delta(base, meta, header.tolist(), items)
        t = threading.Thread(target=receive)
        t.start()
        send_g.broadcast(torch.tensor(counts, dtype=torch.int64), 0).wait()
        packer = Packer(send_g, limit)
        sent = sum(packer.add(p) for p in pieces)
        packer.finish()
        t.join(timeout=60)
        names = list(weights)
        assert tensor_digest((n, base[n]) for n in names) == tensor_digest(weights.items()) == enc.digest(names)
        assert got["changed"] == [n for n, c in zip(names, counts) if c != UNCHANGED]
        dense = sum(w.numel() * 2 for w in weights.values())
        assert sent == (dense if full else sum(w.numel() * 2 for w, c in zip(weights.values(), counts) if c == DENSE)
                        + sum(c * 6 for c in counts if c > 0))
        if update == 2:
            assert sent == 12 and sent < dense / 500  # two changed bf16 elements: 2 x (4-byte index + 2-byte value)


def test_a_delta_before_any_full_update_is_refused():
    from weights.wire import apply_delta
    with pytest.raises(RuntimeError, match="a delta for w arrived before any full weights"):
        apply_delta({}, [("w", "bfloat16", (4,))], [1], iter([("w#idx", torch.tensor([0])), ("w#val", torch.ones(1))]))
