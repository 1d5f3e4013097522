"""Checkpoint directories: written in full, then renamed, so a half-written one is never picked.

Layout of ``<output_dir>/checkpoints/step_000100/``::

    hf/          the policy in Hugging Face format (transformers and vLLM load it directly;
                 LoRA merged), with the tokenizer and processor files
    deepspeed/   DeepSpeed state of every learner rank (weights, optimizer, LR schedule, RNG)
    state.json   the orchestrator's state: step, data position, per-step metrics so far
    COMPLETE     written last; only directories that have it count

``latest`` returns the newest complete checkpoint; ``rotate`` keeps the newest ``keep``. ``save``
writes one from the learner ranks and the driver's state; ``resume`` restores a run from one.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import time

from actors.group import role_of
from conf import ConfigError
from trainer.pipeline import from_json, to_json
from trainer import progress

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
    atomic_write(tmp / "state.json", json.dumps(state))
    _fsync_tree(tmp)  # every file the learner ranks wrote is on disk before COMPLETE says so
    with open(tmp / "COMPLETE", "w") as f:
        f.write(json.dumps({"step": step, "time": time.time()}))
        f.flush()
        os.fsync(f.fileno())
    final = tmp.parent / f"{PREFIX}{step:06d}"
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final


def _fsync_tree(top: pathlib.Path) -> None:
    for path in sorted(top.rglob("*"), reverse=True) + [top]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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


def save(out_dir, step: int, learners, sampler, history: list, keep: int, in_flight=()) -> pathlib.Path:
    """A complete checkpoint of ``step``: every learner rank's state, the data position, the metric
    rows so far and the generated batches not yet trained; older ones beyond ``keep`` are deleted."""
    t0 = time.perf_counter()
    tmp = staging(out_dir, step)
    learners.get(learners.call("save_checkpoint", str(tmp)), f"saving the checkpoint of step {step}")
    final = commit(tmp, step, {"step": step, "sampler": sampler.state(), "history": history,
                               "in_flight": [to_json(b) for b in in_flight]})
    rotate(out_dir, keep)
    progress.write(f"checkpoint saved: {final} ({time.perf_counter() - t0:.1f} s)")
    return final


def resume(spec, out_dir: pathlib.Path, learners, engines, sampler, train: list, max_staleness: int) -> tuple[int, list, list]:
    """Restore learner state, data position, metrics and the batches that were generated but not
    yet trained (asynchronous runs) from checkpoint ``spec`` (``auto``: the newest complete one in
    ``out_dir``; None: start fresh), and push its weights to the engines. Returns (step, history,
    in_flight)."""
    if not spec:
        return 0, [], []
    ckpt = latest(out_dir) if spec == "auto" else pathlib.Path(spec)
    if ckpt is None:
        print(f"trainer.resume=auto: no complete checkpoint in {out_dir}, starting fresh", flush=True)
        return 0, [], []
    if not (ckpt / "COMPLETE").is_file():
        raise SystemExit(f"{ckpt} is not a complete checkpoint (no COMPLETE marker)")
    state = json.loads((ckpt / "state.json").read_text())
    saved = state.get("in_flight", [])
    if len(saved) > max_staleness:
        raise SystemExit(f"{ckpt} holds {len(saved)} generated batches waiting for training, more than "
                         f"trainer.max_staleness={max_staleness}: resume with trainer.max_staleness={len(saved)} "
                         "(or more) so that none is dropped")
    learners.get(learners.call("load_checkpoint", str(ckpt)), f"loading {ckpt}")
    sampler.load_state(state["sampler"])
    step, history = int(state["step"]), state["history"]
    engines.sync(version=step)
    by_id = {p.id: p for p in train}
    in_flight = [from_json(b, by_id) for b in saved]
    trim_metrics(out_dir / "metrics.jsonl", step)
    print(f"resumed from {ckpt} at step {step}" + (f" with {len(in_flight)} generated batches" if in_flight else ""),
          flush=True)
    return step, history, in_flight


RUN_FILES = ("metrics.jsonl", "summary.json", "checkpoints")


def claim(out_dir: pathlib.Path, resume) -> None:
    """A fresh run (``resume`` null) refuses a directory that holds another run's files: it would
    append to its metrics, and ``trainer.resume=auto`` or checkpoint rotation could later take the
    other run's checkpoints for its own."""
    if resume:
        return
    found = [n for n in RUN_FILES if (out_dir / n).is_file() or (out_dir / n).is_dir() and any((out_dir / n).iterdir())]
    if found:
        raise ConfigError(f"trainer.output_dir={out_dir} holds another run ({', '.join(found)}): continue it with "
                          "trainer.resume=auto, or give this run a fresh trainer.output_dir")


def trim_metrics(path: pathlib.Path, step: int) -> int:
    """Keep the rows of ``metrics.jsonl`` up to ``step`` (a resumed run rewrites the rest), dropping
    a torn line (a crash mid-write); the file is replaced atomically. Returns the rows dropped."""
    if not path.exists():
        return 0
    keep, dropped = [], 0
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1  # torn or garbled: the resumed run logs that step again
            continue
        if isinstance(row, dict) and row.get("step", 0) <= step:
            keep.append(line)
        else:
            dropped += 1
    atomic_write(path, "".join(line + "\n" for line in keep))
    return dropped


def atomic_write(path: pathlib.Path, text: str) -> None:
    """Write ``text`` to ``path`` through a synced temporary file and a rename: a reader sees the old
    file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def restartable(error: BaseException, out_dir: pathlib.Path, restart: int, max_restarts: int) -> bool:
    """After an actor of a training run died or hung (``RayActorError``, ``RoleHung``): True when it
    was a learner rank and restarts are left (the learner ranks are then started afresh, the engines
    reconnected, and the run resumes from the last complete checkpoint), False for any other role
    (re-raise it). With no restart left: stop, saying how to continue."""
    if role_of(error) != "learner":
        return False
    last = latest(out_dir)
    where = f"the last complete checkpoint is {last}" if last else "no checkpoint was written yet"
    if restart == max_restarts:
        raise SystemExit(f"a learner rank died or hung ({error.__class__.__name__}: {error}"[:300] + f"); {where}. Continue with the same "
                         f"command plus trainer.resume=auto (or set trainer.max_restarts to restart "
                         f"automatically); the worker logs are under Ray's session dir.") from None
    print(f"a learner rank died or hung ({error.__class__.__name__}); {where}: restarting the learner ranks and resuming from it "
          f"(restart {restart + 1} of trainer.max_restarts={max_restarts})", flush=True)
    return True
