"""Checkpoint directories: written in full, then renamed, so a half-written one is never picked.

Layout of ``<output_dir>/checkpoints/step_000100/``::

    hf/          the policy in Hugging Face format (transformers and vLLM load it directly;
                 LoRA merged), with the tokenizer and processor files
    deepspeed/   DeepSpeed state of every learner rank (weights, optimizer, LR schedule, RNG)
    state.json   the orchestrator's state: step, data position, per-step metrics so far
    COMPLETE     written last; only directories that have it count

``latest`` returns the newest complete checkpoint; ``rotate`` keeps the newest ``keep``.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import time

PREFIX = "step_"


def root(out_dir) -> pathlib.Path:
    return pathlib.Path(out_dir) / "checkpoints"


def staging(out_dir, step: int) -> pathlib.Path:
    """A fresh temporary directory for the checkpoint of ``step``."""
    tmp = root(out_dir) / f".{PREFIX}{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def commit(tmp: pathlib.Path, step: int, state: dict) -> pathlib.Path:
    """Write ``state.json`` and ``COMPLETE`` into ``tmp``, then rename it into place."""
    (tmp / "state.json").write_text(json.dumps(state))
    with open(tmp / "COMPLETE", "w") as f:
        f.write(json.dumps({"step": step, "time": time.time()}))
        f.flush()
        os.fsync(f.fileno())
    final = tmp.parent / f"{PREFIX}{step:06d}"
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final


def complete(out_dir) -> list[pathlib.Path]:
    """Complete checkpoints, oldest first."""
    r = root(out_dir)
    if not r.is_dir():
        return []
    found = [p for p in r.iterdir() if p.name.startswith(PREFIX) and (p / "COMPLETE").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest(out_dir) -> pathlib.Path | None:
    done = complete(out_dir)
    return done[-1] if done else None


def rotate(out_dir, keep: int) -> list[pathlib.Path]:
    """Delete all but the newest ``keep`` complete checkpoints (and stale temp dirs)."""
    removed = []
    done = complete(out_dir)
    for p in done[:-keep] if keep > 0 else []:
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    r = root(out_dir)
    for p in r.glob(f".{PREFIX}*.tmp") if r.is_dir() else []:
        shutil.rmtree(p, ignore_errors=True)
    return removed


def copy_processor_files(src: str, dst: pathlib.Path) -> None:
    """Tokenizer, processor and chat-template files of the original model, beside new weights."""
    names = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
             "processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json",
             "chat_template.jinja", "chat_template.json", "added_tokens.json", "generation_config.json")
    for n in names:
        s = pathlib.Path(src) / n
        if s.is_file() and not (dst / n).exists():
            shutil.copy2(s, dst / n)
