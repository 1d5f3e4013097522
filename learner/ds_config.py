"""DeepSpeed configuration from the ``learner`` config section."""
from __future__ import annotations


def ds_config(cfg, micro_batch_size: int, grad_accum: int, world_size: int, train: bool = True) -> dict:
    """A DeepSpeed config dict. The optimizer and LR scheduler are passed as objects (torch AdamW
    and a LambdaLR), so nothing needs DeepSpeed's compiled ops on CPU."""
    stage = int(cfg["zero_stage"])
    zero = {"stage": stage}
    if stage == 3:
        # shard everything: the default threshold keeps parameters < 100k elements whole
        zero.update({"stage3_param_persistence_threshold": 0 if cfg.get("zero3_shard_all", True) else 100000,
                     "stage3_gather_16bit_weights_on_model_save": True})
    out = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch_size * grad_accum * world_size,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": cfg["dtype"] == "bf16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if train and cfg["grad_clip"]:
        out["gradient_clipping"] = float(cfg["grad_clip"])
    return out
