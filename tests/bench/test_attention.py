"""bench.attention at the tiny size: three variants of the same update, their log-probs equal."""
from bench.attention import main


def test_the_three_variants_give_the_same_logprobs_and_times(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # (bench/results of this run)
    rows = main(["--sizes", "tiny", "--dtypes", "fp32", "--reps", "1", "--generations", "3", "--tokens", "8"])
    assert [r["variant"] for r in rows] == ["masked row (baseline)", "blockwise", "unshared"]
    base = rows[0]
    assert base["logp_diff"] == 0.0 and base["x_masked_row"] == 1.0
    for r in rows:
        assert r["logp_diff"] < 1e-5  # fp32 round-off: the same completions' log-probs three ways
        assert 0 < r["best_s"] <= r["median_s"] and r["x_masked_row"] > 0
    assert (tmp_path / "bench/results/attention.json").exists()
