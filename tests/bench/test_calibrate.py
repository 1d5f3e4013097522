"""bench/calibrate.py's fit inverts bench/loop_model.py: steps made by the model from known rates
give those rates back, so the fitting equations and the model's formulas cannot drift apart."""
import pytest

from bench import calibrate
from bench.loop_model import Layout, Rates, Workload, generate_seconds, predict, train_seconds

TRUE = Rates(decode_step_s=0.02, decode_seq_s=0.0004, prefill_tokens_per_s=5000, max_seqs=256,
             train_tokens_per_s=900, forward_tokens_per_s=2700, optimizer_s=0.3, reward_s_per_sample=0.001,
             sync_bytes_per_s=5e8, sync_latency_s=0.0, vision_s_per_image=0.05)
PROMPT = 120.0


def _rows(G: int, prompts: int, over: list[str], lengths: list[tuple[float, float]]) -> list[dict]:
    """Metric rows of a synchronous one-engine run whose phases take what the model says."""
    rows = []
    for mean, longest in lengths:
        w = Workload(prompts=prompts, G=G, prompt_tokens=PROMPT, completion_tokens=mean, longest_tokens=longest,
                     params_b=0.001, prefix_sharing=calibrate.NO_SHARING not in over)
        items = prompts * G
        row = {"items": items, "completion_len/mean": mean, "completion_len/max": longest,
               "time/rollout_s": generate_seconds(w, TRUE, 1), "time/train_s": train_seconds(w, TRUE, 1, 0),
               "time/reward_s": items * TRUE.reward_s_per_sample / calibrate.REWARD_WORKERS,
               "time/sync_s": 2e6 / TRUE.sync_bytes_per_s, "sync/bytes": 2e6}
        row["time/step_s"] = sum(row[f"time/{k}_s"] for k in ("rollout", "reward", "train", "sync"))
        if w.prefix_sharing:
            row["learner/lm_tokens"] = prompts * PROMPT + items * mean
            row["learner/lm_tokens_unshared"] = items * (PROMPT + mean)
        rows.append(row)
    return rows


def test_the_fit_recovers_the_rates_that_made_the_steps():
    lengths = [(30.0, 48.0), (41.0, 48.0), (25.5, 40.0)]
    points = []
    for G, prompts, over in calibrate.FIT_POINTS:
        rows = _rows(G, prompts, over, lengths)
        points.append((calibrate.workload(rows, G, prompts, over, PROMPT), rows))
    got = calibrate.fit(points, sync_bytes=2e6)
    for name in ("decode_step_s", "decode_seq_s", "prefill_tokens_per_s", "train_tokens_per_s", "forward_tokens_per_s",
                 "optimizer_s", "vision_s_per_image", "reward_s_per_sample", "sync_bytes_per_s"):
        assert getattr(got, name) == pytest.approx(getattr(TRUE, name), rel=1e-6), name
    # and a check row predicted from the fitted rates is the step the true rates make
    w = calibrate.workload(_rows(8, 2, [], lengths), 8, 2, [], PROMPT)
    layout = Layout(engines=1, learner_ranks=1, reward_workers=calibrate.REWARD_WORKERS, shared_cores=2)
    assert predict(w, got, layout).step_s == pytest.approx(predict(w, TRUE, layout).step_s, rel=1e-6)


def test_nnls_keeps_every_coefficient_non_negative():
    # y = 2 a - 1 b exactly; the best fit with b >= 0 drops b
    x = [[1, 1], [2, 1], [3, 1], [4, 2]]
    y = [2 * a - b for a, b in x]
    coef = calibrate.nnls(x, y)
    assert min(coef) >= 0 and coef[1] == 0
    assert calibrate.nnls([[1, 0], [0, 1], [1, 1]], [1, 2, 3]) == pytest.approx([1, 2])


def test_a_saved_calibration_replays_into_rates_and_checked_rows():
    lengths = [(30.0, 48.0), (41.0, 48.0), (25.5, 40.0)]
    record = {"size": "toy", "params": 1e6, "cores": 2, "fit": [_rows(G, n, over, lengths) for G, n, over in calibrate.FIT_POINTS],
              "checks": {name: _rows(*calibrate.CHECKS[name], [(30.0, 48.0)] * 3)  # (measured: the median step)
                         for name in ("sync G4", "sync G16", "sync G8 no sharing")} | {"async G8": None}}
    rates, rows = calibrate.evaluate(record)
    assert rates["size"] == "toy" and rates["decode_step_s"] == pytest.approx(TRUE.decode_step_s)
    assert [r["row"] for r in rows] == ["sync G4", "sync G16", "sync G8 no sharing", "async G8"]
    for r in rows[:3]:  # steps made by the model itself: predicted exactly
        assert r["error_%"] == pytest.approx(0.0, abs=1e-6) and r["step_meas"] > 0
    assert rows[3]["critical_path"] == "run failed" and "error_%" not in rows[3]
