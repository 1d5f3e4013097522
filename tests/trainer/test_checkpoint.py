"""Checkpoint directories: complete ones only, newest first, rotated."""
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
