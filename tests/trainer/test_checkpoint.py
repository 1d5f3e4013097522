"""Checkpoint directories: complete ones only, newest first, rotated; one run per directory; a torn
metrics line survives a resume."""
import json

import pytest

from conf import ConfigError
from trainer import checkpoint


def test_half_written_checkpoints_are_never_picked(tmp_path):
    assert checkpoint.latest(tmp_path) is None
    for step in (2, 4):
        checkpoint.commit(checkpoint.staging(tmp_path, step), step, {"step": step})
    (checkpoint.root(tmp_path) / "step_000006").mkdir()             # crashed before COMPLETE
    checkpoint.staging(tmp_path, 8)                                  # crashed while writing
    assert checkpoint.latest(tmp_path).name == "step_000004"
    assert [p.name for p in checkpoint.complete(tmp_path)] == ["step_000002", "step_000004"]


def test_rotation_keeps_the_newest_and_clears_stale_temp_dirs(tmp_path):
    for step in (1, 2, 3):
        checkpoint.commit(checkpoint.staging(tmp_path, step), step, {"step": step})
    checkpoint.staging(tmp_path, 4)
    removed = checkpoint.rotate(tmp_path, keep=2)
    assert [p.name for p in removed] == ["step_000001"]
    assert sorted(p.name for p in checkpoint.root(tmp_path).iterdir()) == ["step_000002", "step_000003"]


def test_recommitting_a_step_replaces_it(tmp_path):
    checkpoint.commit(checkpoint.staging(tmp_path, 5), 5, {"v": 1})
    final = checkpoint.commit(checkpoint.staging(tmp_path, 5), 5, {"v": 2})
    assert (final / "state.json").read_text() == '{"v": 2}'


def test_a_fresh_run_refuses_another_runs_directory(tmp_path):
    checkpoint.claim(tmp_path / "new", None)  # nothing there yet
    (tmp_path / "checkpoints").mkdir()
    checkpoint.claim(tmp_path, None)  # an empty checkpoints dir is no run
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    checkpoint.commit(checkpoint.staging(tmp_path, 10), 10, {"step": 10})
    with pytest.raises(ConfigError, match=r"holds another run \(metrics.jsonl, checkpoints\): continue it with "
                                          r"trainer.resume=auto, or give this run a fresh trainer.output_dir"):
        checkpoint.claim(tmp_path, None)
    checkpoint.claim(tmp_path, "auto")  # continuing it is what the directory is for


def test_resume_trims_metrics_past_the_checkpoint_and_a_torn_last_line_atomically(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "loss": 0.1 * s} for s in (1, 2, 3, 4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5, "lo')  # power lost mid-line
    assert checkpoint.trim_metrics(path, 3) == 2  # step 4 (after the checkpoint) and the torn line
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows[:3]
    assert not (tmp_path / ".metrics.jsonl.tmp").exists()  # the temporary file was renamed into place
    assert checkpoint.trim_metrics(tmp_path / "none.jsonl", 3) == 0
