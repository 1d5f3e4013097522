"""Learner checkpoints: save, load, HF export -- and loading that never runs code.

``CheckpointIO`` is mixed into ``learner.learner.Learner`` (it uses the learner's ``engine``,
``rank``, ``lora``, ``model_path`` and ``steps_done``). ``save_checkpoint`` writes DeepSpeed's full
state (weights, optimizer, schedule, RNG) on every rank and, on rank 0, the policy in HF format;
``load_checkpoint`` restores it.

DeepSpeed's ``TorchCheckpointEngine.load`` calls ``torch.load(..., weights_only=False)``, which
runs whatever a pickle in the file asks for. ``install`` swaps in ``WeightsOnlyCheckpointEngine``,
whose loader only accepts tensors, containers, numbers and strings (plus the allowlisted DeepSpeed
records below), so a tampered checkpoint fails to load instead of executing code.
"""
from __future__ import annotations

import contextlib
import pathlib
import shutil

import torch
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

from weights.wire import buckets


def _allowlist() -> list:
    """Non-tensor classes DeepSpeed writes into its own state files: plain records rebuilt from
    their fields (no ``__reduce__`` to a callable, no ``__setstate__``)."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address
    return [LossScaler, ZeroStageEnum, fragment_address]


class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
    def load(self, path: str, map_location=None):
        with torch.serialization.safe_globals(_allowlist()):
            return torch.load(path, map_location=map_location, weights_only=True)


def install(engine) -> None:
    """Make a DeepSpeed engine (and its ZeRO optimizer) load checkpoints weights-only."""
    safe = WeightsOnlyCheckpointEngine(None)
    engine.checkpoint_engine = safe
    if hasattr(engine.optimizer, "checkpoint_engine"):
        engine.optimizer.checkpoint_engine = safe


class CheckpointIO:
    def _export_state(self) -> dict:
        """Full HF state dict on rank 0 (gathered under ZeRO-3; LoRA merged under base names)."""
        import deepspeed
        model = self.engine.module
        if self.lora:
            base = model.get_base_model()
            deltas = {f"{n}.weight": m for n, m in base.named_modules()
                      if hasattr(m, "get_delta_weight") and hasattr(m, "base_layer")}
            named = [(n.replace(".base_layer.", "."), p) for n, p in base.named_parameters() if "lora_" not in n]
        else:
            deltas, named = {}, list(model.named_parameters())
        out = {}
        for bucket in buckets([(n, p, None) for n, p in named], 256 * 2**20, self._numel):
            params = [p for _, p, _ in bucket]
            ctx = (deepspeed.zero.GatheredParameters(params, modifier_rank=None)
                   if any(hasattr(p, "ds_id") for p in params) else contextlib.nullcontext())
            with ctx, torch.no_grad():
                if self.rank == 0:
                    for n, p, _ in bucket:
                        t = p + deltas[n].get_delta_weight("default") if n in deltas else p
                        out[n] = t.detach().to("cpu", copy=True).contiguous()
        return out

    def save_checkpoint(self, path: str) -> str | None:
        """All ranks: DeepSpeed state (weights, optimizer, schedule, RNG) under ``path/deepspeed``;
        rank 0 also writes the policy in HF format under ``path/hf``. Returns the hf dir on rank 0."""
        path = pathlib.Path(path)
        client = {"torch_rng": torch.get_rng_state(), "steps_done": self.steps_done}
        self.engine.save_checkpoint(str(path / "deepspeed"), tag="state", client_state=client, save_latest=False)
        state = self._export_state()
        if self.rank != 0:
            return None
        model = self.engine.module.get_base_model() if self.lora else self.engine.module
        model.save_pretrained(path / "hf", state_dict=state, safe_serialization=True)
        copy_processor_files(self.model_path, path / "hf")
        return str(path / "hf")

    def load_checkpoint(self, path: str) -> int:
        """All ranks: restore the DeepSpeed state written by ``save_checkpoint``; returns steps done."""
        _, client = self.engine.load_checkpoint(str(pathlib.Path(path) / "deepspeed"), tag="state",
                                                load_optimizer_states=True, load_lr_scheduler_states=True)
        if client is None:
            raise FileNotFoundError(f"no DeepSpeed state under {path}/deepspeed")
        torch.set_rng_state(client["torch_rng"])
        self.steps_done = int(client["steps_done"])
        return self.steps_done


def copy_processor_files(src: str, dst: pathlib.Path) -> None:
    """Tokenizer, processor and chat-template files of the original model, beside new weights."""
    names = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
             "processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json",
             "chat_template.jinja", "chat_template.json", "added_tokens.json", "generation_config.json")
    for n in names:
        s = pathlib.Path(src) / n
        if s.is_file() and not (dst / n).exists():
            shutil.copy2(s, dst / n)
