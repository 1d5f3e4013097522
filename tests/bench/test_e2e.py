"""bench.e2e's bookkeeping (the runs themselves are the benchmark): which engine a row used, and the
ratios of a table built from measured seconds."""
import pytest

from bench import e2e


def test_each_row_names_the_engine_it_generated_with(monkeypatch):
    assert e2e.engine_of("trl") == "HF generate"
    assert e2e.engine_of("ours:sync-eager") == e2e.engine_of("ours:old-defaults") == "eager"
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/g++" if name == "g++" else None)
    assert e2e.engine_of("ours:sync") == e2e.engine_of("ours:async") == "compiled"  # auto, a compiler on PATH
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert e2e.engine_of("ours:sync") == "eager"  # auto without a compiler


def test_rows_compare_samples_per_second_within_one_precision():
    res = {s: {"samples": 48, "seconds": sec, "generate": sec / 2, "reward": 0.0, "train": sec / 2, "sync": 0.0,
               "other": 0.0} for s, sec in [("ours:sync", 12.0), ("ours:async", 16.0), ("trl", 24.0)]}
    rows = {r["system"]: r for r in e2e._rows(res, "30m", 30_000_000, "fp32")}
    assert rows["this project, sync"]["samples_per_s"] == pytest.approx(4.0)
    assert rows["this project, sync"]["x_TRL"] == pytest.approx(2.0)
    assert rows["this project, async"]["x_TRL"] == pytest.approx(1.5)
    assert rows["this project, async"]["x_sync"] == pytest.approx(0.75)
    assert "x_TRL" not in rows["TRL GRPOTrainer"] and rows["TRL GRPOTrainer"]["engine"] == "HF generate"
    assert rows["this project, sync"]["generate_%"] == pytest.approx(50.0)
    sync, trl = rows["this project, sync"], rows["TRL GRPOTrainer"]
    assert (sync["gen_s/sample"], sync["train_s/sample"], trl["gen_s/sample"]) == pytest.approx((0.125, 0.125, 0.25))
    assert (sync["gen_x_TRL"], sync["train_x_TRL"]) == pytest.approx((2.0, 2.0))
    assert "gen_x_TRL" not in rows["this project, async"]  # its phases overlap: no per-phase ratio


def test_a_tiny_model_is_timed_over_enough_steps_unless_asked_otherwise():
    assert [e2e.steps_for(s, None) for s in ("tiny", "30m", "400m")] == [20, 3, 3]
    assert [e2e.steps_for(s, 5) for s in ("tiny", "30m")] == [5, 5]
