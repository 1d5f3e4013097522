"""bench.linear at the tiny size: the same update with both kernels, their log-probs equal."""
import pytest

from bench.linear import main, mlp_shape, probe
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


def test_the_mlp_shape_comes_from_the_config_or_the_most_common_linear_layer():
    import types

    import torch
    model = torch.nn.Sequential(*[torch.nn.Linear(8, 32) for _ in range(3)], torch.nn.Linear(32, 8),
                                *[torch.nn.Linear(8, 8) for _ in range(3)])
    model.config = types.SimpleNamespace(text_config=types.SimpleNamespace(hidden_size=64, intermediate_size=256))
    assert mlp_shape(model) == (64, 256)
    model.config = types.SimpleNamespace(vocab_size=10)  # no sizes: 3 x (8 -> 32) and 3 x (8 -> 8), the larger
    assert mlp_shape(model) == (8, 32)
    assert probe(64, 128, rows=64, reps=2) > 0
