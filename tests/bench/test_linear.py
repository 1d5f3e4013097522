"""bench.linear at the tiny size: the same update with both kernels, their log-probs equal."""
import pytest

from bench.linear import main
from learner import linear


@pytest.mark.skipif(not linear.available(), reason="this torch has no oneDNN inner product")
def test_both_kernels_give_the_same_logprobs_and_times(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # (bench/results of this run)
    rows = main(["--sizes", "tiny", "--reps", "1", "--generations", "3", "--tokens", "8"])
    assert [r["linear"] for r in rows] == ["torch (baseline)", "onednn"]
    assert rows[0]["x_torch"] == 1.0 and rows[1]["logp_diff"] < 1e-5  # fp32 round-off
    for r in rows:
        assert 0 < r["best_s"] <= r["median_s"] and r["x_torch"] > 0
    assert rows[1]["probe_x"] > 0
    assert (tmp_path / "bench/results/linear.json").exists()
