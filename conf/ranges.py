"""The valid range of every numeric key of ``conf/base.yaml``, checked when a config is loaded.

    check("learner.world_size", 0)   # ConfigError: learner.world_size=0 is out of range: it must be >= 1

A range is written as an interval: ``[1,)`` is >= 1, ``(0,)`` is > 0, ``(0,1]`` is above 0 and at
most 1. A key whose default is null takes null (its documented meaning) or a number in range.
``tests/conf/test_ranges.py`` walks every numeric key of base.yaml, so a new one needs its range here.
"""
from __future__ import annotations

import math
import re


class ConfigError(ValueError):
    """A configuration mistake, with what to do about it."""


RANGES: dict[str, str] = {
    "seed": "[0,)",
    "model.min_pixels": "[1,)",
    "model.max_pixels": "[1,)",
    "data.max_image_pixels": "[1,)",
    "data.synthetic.seed": "[0,)",
    "data.synthetic.n_train": "[1,)",
    "data.synthetic.n_val": "[1,)",
    "data.synthetic.n_ood": "[0,)",
    "rollout.num_engines": "[1,)",
    "rollout.devices_per_engine": "[1,)",
    "rollout.cpus_per_engine": "(0,)",
    "rollout.cpu_threads": "[1,)",
    "rollout.num_generations": "[2,)",          # a group of one has no relative advantage
    "rollout.temperature": "(0,)",              # 0 would divide the log-probs by zero
    "rollout.top_p": "(0,1]",
    "rollout.max_new_tokens": "[1,)",
    "rollout.max_model_len": "[2,)",
    "rollout.kv_cache_gb": "(0,)",
    "rollout.gpu_memory_utilization": "(0,1]",
    "rollout.timeout_s": "(0,)",
    "rollout.sync_full_every": "[1,)",
    "rollout.dynamic_sampling.min_std": "[0,)",
    "rollout.dynamic_sampling.max_rounds": "[0,)",
    "reward.num_workers": "[1,)",
    "reward.cpus_per_worker": "(0,)",
    "reward.chunk_size": "[1,)",
    "reward.timeout_s": "(0,)",
    "learner.world_size": "[1,)",
    "learner.cpus_per_rank": "(0,)",
    "learner.cpu_threads": "[1,)",
    "learner.gpus_per_rank": "[0,)",
    "learner.timeout_s": "(0,)",
    "learner.lr": "(0,)",                       # a negative rate trains uphill, silently
    "learner.weight_decay": "[0,)",
    "learner.warmup_steps": "[0,)",
    "learner.grad_clip": "[0,)",
    "learner.micro_batch_size": "[1,)",
    "learner.beta": "[0,)",
    "learner.clip_low": "[0,1)",
    "learner.clip_high": "[0,)",
    "learner.loss_norm": "(0,)",
    "learner.adv_eps": "[0,)",
    "learner.num_iterations": "[1,)",
    "learner.is_cap": "(1,)",
    "learner.lora.r": "[0,)",
    "learner.lora.alpha": "(0,)",
    "learner.lora.dropout": "[0,1)",
    "trainer.max_steps": "[1,)",
    "trainer.prompts_per_step": "[1,)",
    "trainer.epochs": "[1,)",
    "trainer.save_steps": "[0,)",
    "trainer.keep_checkpoints": "[1,)",
    "trainer.stop_after_steps": "[1,)",
    "trainer.eval_steps": "[0,)",
    "trainer.max_bad_steps": "[1,)",
    "trainer.max_restarts": "[0,)",
    "eval.max_samples": "[1,)",
    "eval.subset_seed": "[0,)",
    "eval.train_samples": "[0,)",
    "cluster.num_cpus": "(0,)",
    "cluster.dashboard_port": "[1,65535]",
    "cluster.metrics_port": "[1,65535]",
    "cluster.startup_timeout_s": "(0,)",
}
_INTERVAL = re.compile(r"^([\[(])(-?[\d.e+-]*),(-?[\d.e+-]*)([\])])$")


def bounds(spec: str) -> tuple[float, bool, float, bool]:
    """(low, low included, high, high included) of an interval such as ``(0,1]``.

    >>> bounds("[1,)"), bounds("(0,1]")
    ((1.0, True, inf, False), (0.0, False, 1.0, True))
    """
    m = _INTERVAL.match(spec)
    if not m:
        raise ValueError(f"bad interval {spec!r}")
    lo = float(m.group(2)) if m.group(2) else -math.inf
    hi = float(m.group(3)) if m.group(3) else math.inf
    return lo, m.group(1) == "[", hi, m.group(4) == "]"


def describe(spec: str) -> str:
    """The interval in words: ``[1,)`` -> ">= 1", ``(0,1]`` -> "> 0 and <= 1"."""
    lo, lo_in, hi, hi_in = bounds(spec)
    parts = []
    if lo > -math.inf:
        parts.append(f"{'>=' if lo_in else '>'} {lo:g}")
    if hi < math.inf:
        parts.append(f"{'<=' if hi_in else '<'} {hi:g}")
    return " and ".join(parts)


def check(key: str, value) -> None:
    """Refuse ``value`` for ``key`` when it is outside the key's range (null passes: the default's meaning)."""
    spec = RANGES.get(key)
    if spec is None or value is None or isinstance(value, str) and "${" in value:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{key}={value!r} should be a number {describe(spec)}")
    lo, lo_in, hi, hi_in = bounds(spec)
    if value < lo or value == lo and not lo_in or value > hi or value == hi and not hi_in:
        raise ConfigError(f"{key}={value!r} is out of range: it must be {describe(spec)}")
