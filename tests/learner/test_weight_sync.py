"""Packed weight transfer over a real gloo group (two ranks, two threads): every tensor arrives
bit-exact and in order, one broadcast per pack, whatever the dtypes and sizes."""
import datetime
import threading

import pytest
import torch

from learner.weight_sync import Packer, free_port, gloo_group, receive_packs, tcp_store, wire_packs


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
