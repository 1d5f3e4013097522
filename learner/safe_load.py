"""Checkpoints are data, never code: DeepSpeed's state files loaded with ``weights_only=True``.

DeepSpeed's ``TorchCheckpointEngine.load`` calls ``torch.load(..., weights_only=False)``, which
runs whatever a pickle in the file asks for. The learner swaps in this engine, whose loader only
accepts tensors, containers, numbers and strings (plus the allowlisted DeepSpeed enums below),
so a tampered checkpoint fails to load instead of executing code.
"""
from __future__ import annotations

import torch
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine


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
