"""Learner side of the weight sync: which tensors the engines need, and sending them.

``WeightSyncIO`` is mixed into ``learner.learner.Learner`` (it uses the learner's ``engine``,
``rank``, ``lora`` and ``_numel``). Rank 0 owns the group (``init_weight_group``) and sends every
update (``broadcast_weights``: dense, or with ``rollout.sync_delta`` only the changed elements, see
``weights/wire.py``); every rank takes part, because ZeRO-3 gathers each bucket first.
"""
from __future__ import annotations

import contextlib

import torch

from weights.wire import buckets


class WeightSyncIO:
    def _named_weights(self):
        """(name, parameter, delta) triples the engines need, in a fixed order: what can change.

        Frozen parameters (e.g. the vision tower) are skipped. With LoRA and ``learner.lora.sync:
        adapter`` only the adapters are sent, under PEFT's file names (``...q_proj.lora_A.weight``):
        the engines hold the frozen base and load them as a vLLM LoRA. With ``merged`` each adapted
        layer is sent as ``base + delta`` under its base name; the merge is computed, never applied
        in place (merging and unmerging every step would drift the frozen base by round-off)."""
        model = self.engine.module
        if self.adapter_sync:
            for name, p in model.named_parameters():
                if p.requires_grad:  # lora_A / lora_B of the adapted language-model layers
                    yield name.replace(".default.", "."), p, None
            return
        if self.lora:
            for mod_name, mod in model.get_base_model().named_modules():
                if hasattr(mod, "get_delta_weight") and hasattr(mod, "base_layer"):
                    yield f"{mod_name}.weight", mod.base_layer.weight, (lambda m=mod: m.get_delta_weight("default"))
            return
        for name, p in model.named_parameters():
            if p.requires_grad:
                yield name, p, None

    @property
    def adapter_sync(self) -> bool:
        """True when each sync sends only the LoRA adapters (``learner.lora.sync: adapter``)."""
        from conf.hardware import resolve_lora_sync
        return bool(self.lora) and resolve_lora_sync(self.cfg["lora"].get("sync", "auto"),
                                                     torch.cuda.is_available())[0] == "adapter"

    def adapter_config(self) -> dict | None:
        """The PEFT ``adapter_config.json`` an engine writes beside the adapters it is sent (plain
        JSON values), or None when syncs send whole weights."""
        if not self.adapter_sync:
            return None
        import json
        config = self.engine.module.peft_config["default"].to_dict()
        return json.loads(json.dumps(config, default=lambda v: sorted(v) if isinstance(v, (set, frozenset)) else str(v)))

    def weight_meta(self, engine_dtype: str = "float32") -> list[tuple[str, str, tuple[int, ...]]]:
        """``(name, dtype, shape)`` of every tensor an update sends, in order, in the engines' dtype."""
        dtype = self.sync_dtype = _engine_dtype(engine_dtype)
        out = []
        for name, p, _ in self._named_weights():
            shape = tuple(p.ds_shape) if hasattr(p, "ds_shape") else tuple(p.shape)
            out.append((name, str(dtype).replace("torch.", ""), shape))
        return out

    def init_weight_group(self, host: str, port: int, world_size: int, pack_bytes: int | None = None,
                          delta_full_every: int = 0) -> int:
        """Rank 0: create the store and join the group (blocks until the engines join). With
        ``delta_full_every`` > 0 updates send only changed elements (``rollout.sync_delta``), every
        ``delta_full_every``-th update and the first after joining in full."""
        if self.rank != 0:
            return 0
        from weights.wire import DeltaEncoder, WeightSender
        self.sender = WeightSender(host, port, world_size, "nccl" if torch.cuda.is_available() else "gloo",
                                   pack_bytes=pack_bytes)
        self.sender.connect()
        if delta_full_every <= 0:
            self.delta = None
        elif getattr(self, "delta", None) is None:
            self.delta = DeltaEncoder(delta_full_every)
        else:
            self.delta.reset()  # (a rebuilt group: the next update goes in full)
        return world_size

    def broadcast_weights(self, bucket_mb: float = 256.0, keep: bool = False) -> int:
        """Send the current weights to every engine; all ranks must call (ZeRO-3 gathers). With
        ``keep``, rank 0 keeps a copy of what it sent, for ``resend_weights``."""
        import deepspeed
        dtype = self.sync_dtype
        named = list(self._named_weights())
        delta = getattr(self, "delta", None) if self.rank == 0 else None
        full = delta.full_due() if delta is not None else True
        sent, kept, counts, pieces = 0, [], [], []
        for bucket in buckets(named, bucket_mb * 2**20, self._numel):
            params = [p for _, p, _ in bucket]
            zero3 = any(hasattr(p, "ds_id") for p in params)
            ctx = deepspeed.zero.GatheredParameters(params, modifier_rank=None) if zero3 else contextlib.nullcontext()
            with ctx, torch.no_grad():
                if self.rank != 0:
                    continue
                copy = keep or delta is not None  # kept (resend) or encoded later: never a view of the parameter
                tensors = [(p + d() if d else p).detach().to(dtype, copy=copy) for _, p, d in bucket]
                if delta is None:
                    sent += self.sender.send(tensors)
                    kept += tensors if keep else []
                    continue
                for (name, _, _), t in zip(bucket, tensors):  # encoded now, sent once the header is out
                    n, parts = delta.encode(name, t, full)
                    counts.append(n)
                    pieces.append(parts)
        if delta is not None:
            self.sender.send_header(torch.tensor(counts, dtype=torch.int64))
            for parts in pieces:
                sent += self.sender.send(parts)
            delta.sent()
        if self.rank == 0:
            self.sender.finish()
        self._snapshot = kept if keep and delta is None else None
        return sent

    def resend_weights(self) -> int:
        """Rank 0: send again the weights of the last ``broadcast_weights(keep=True)`` -- what a
        replaced engine needs while this learner has already moved on (asynchronous training)."""
        delta = getattr(self, "delta", None)
        if delta is not None:  # what the engines hold is the encoder's base: all of it, dense
            names = [name for name, _, _ in self._named_weights()]
            self.sender.send_header(torch.full((len(names),), -1, dtype=torch.int64))
            n = self.sender.send([delta.base[name] for name in names])
            self.sender.finish()
            return n
        if getattr(self, "_snapshot", None) is None:
            raise RuntimeError("resend_weights: no weights were kept at the last sync (broadcast_weights(keep=True))")
        n = self.sender.send(self._snapshot)
        self.sender.finish()
        return n

    def weight_digest(self) -> str:
        """Rank 0 with delta sync: sha256 of the weights the engines should hold (for checks)."""
        return self.delta.digest([name for name, _, _ in self._named_weights()])


def _engine_dtype(name: str) -> torch.dtype:
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(name, torch.float32)
