"""Dynamic sampling against a source of known pass rates: kept groups have spread, the cost per kept
group is 1/q, refills never overshoot, the round cap completes the step instead of crashing."""
import random

import pytest

from actors.rollout import Rollout
from data.loaders import Prompt
from data.sampler import PromptSampler
from trainer.pipeline import Batch
from trainer.sampling import DynamicSampler, group_spread, signal_frac, task_metric

G = 8


def _batch(prompt_ids, rng, p, shaped=False):
    """Scored groups where each sample hits (rec_iou 0.9) with probability p, else misses (0.0).
    ``shaped``: an all-miss group still differs in a format term (NeMo-RL #2431's trap)."""
    prompts = [Prompt(pid, (), (), "q", "[0, 0, 1, 1]", "rec") for pid in prompt_ids]
    rollouts, scored = [], {}
    for pr in prompts:
        for s in range(G):
            r = Rollout(pr, s, [1], [2], "x", "stop", [0.0], ())
            iou = 0.9 if rng.random() < p else 0.0
            fmt = float(s % 2) if shaped else 1.0
            rollouts.append(r)
            scored[r.key] = {"total": iou + fmt, "values": {"rec_format": fmt, "rec_iou": iou}}
    return Batch(0, prompts, rollouts, scored, {}, 0, {"rollout": 1.0, "reward": 0.1})


class Source:
    """Prompts in data order; ``more(n)`` generates the next n, as the orchestrator's refills do."""

    def __init__(self, p, seed=0, shaped=False, limit=None):
        self.rng, self.p, self.shaped, self.next_id, self.limit, self.asked = random.Random(seed), p, shaped, 0, limit, []

    def take(self, n):
        if self.limit is not None:
            n = min(n, self.limit - self.next_id)
        if n <= 0:
            return None
        ids = [f"p{self.next_id + i}" for i in range(n)]
        self.next_id += n
        self.asked.append(n)
        return _batch(ids, self.rng, self.p, self.shaped)


def test_task_metric_is_the_raw_accuracy_not_the_shaped_total():
    assert task_metric({"rec_format": 1.0, "rec_iou": 0.3, "repetition": -0.5}, None) == 0.3
    b = _batch(["a"], random.Random(0), p=0.0, shaped=True)  # every sample misses; the format term varies
    assert {r["total"] for r in b.scored.values()} == {0.0, 1.0}
    assert group_spread(b, None) == {"a": 0.0}  # no task signal: dropped, whatever the shaped total does
    assert group_spread(b, "rec_format")["a"] == pytest.approx(0.5)


@pytest.mark.parametrize("p", [0.5, 0.9, 0.97])
def test_kept_groups_have_spread_and_cost_one_over_q(p):
    B, steps = 4, 300
    src = Source(p, seed=1)
    ds = DynamicSampler(B, min_std=0.01, max_rounds=50)
    generated = kept_total = 0
    for _ in range(steps):
        out = ds.fill(src.take(B), src.take)
        assert len(out.prompts) == B and len(out.rollouts) == B * G and not out.times["sampling/filled"]
        assert all(s > 0.01 for s in group_spread(out, None).values())
        assert [r.key for r in out.rollouts] == [(pr.id, s) for pr in out.prompts for s in range(G)]
        generated += out.times["sampling/prompts_generated"]
        kept_total += B
        assert out.times["sampling/extra_generations"] == (out.times["sampling/prompts_generated"] - B) * G
    q = 1 - p ** G - (1 - p) ** G
    # prompts generated per kept group: 1/q (each prompt is kept with probability q, none wasted)
    assert generated / kept_total == pytest.approx(1 / q, rel=0.12)
    assert all(n <= B for n in src.asked)  # refills ask for the missing count: never a surplus


def test_round_cap_completes_the_step_with_dropped_groups_and_counts_it():
    src = Source(p=1.0)  # every sample hits: no group ever has spread
    ds = DynamicSampler(4, min_std=0.01, max_rounds=2)
    out = ds.fill(src.take(4), src.take)
    assert len(out.prompts) == 4 and out.times["sampling/rounds"] == 2 and out.times["sampling/filled"] == 4
    assert out.times["sampling/signal_frac"] == 0.0 and out.times["sampling/prompts_generated"] == 12
    assert [p.id for p in out.prompts] == ["p0", "p1", "p2", "p3"]  # completed in data order
    assert out.times["rollout"] == pytest.approx(3.0)  # the refills' time is the step's


def test_used_up_data_stops_refills_without_a_crash():
    src = Source(p=1.0, limit=6)
    out = DynamicSampler(4, 0.01, max_rounds=5).fill(src.take(4), src.take)
    assert len(out.prompts) == 4 and out.times["sampling/data_exhausted"] == 1
    assert out.times["sampling/prompts_generated"] == 6


def test_zero_rounds_only_filters_and_a_mixed_batch_keeps_its_signal_groups_first():
    rng = random.Random(0)
    b = _batch(["a", "b", "c"], rng, p=0.5)
    for s in range(G):  # make "a" all-miss
        b.scored[("a", s)]["values"]["rec_iou"] = 0.0
    out = DynamicSampler(3, 0.01, max_rounds=0).fill(b, lambda n: pytest.fail("no refill with max_rounds=0"))
    assert [p.id for p in out.prompts] == ["b", "c", "a"] and out.times["sampling/filled"] == 1


def test_sampler_take_continues_the_order_and_stays_within_an_epoch():
    s = PromptSampler(10, 4, seed=0, epochs=2)
    order = s._order(0)
    assert s.next() == order[:4] and s.take(3) == order[4:7] and s.take(5) == order[7:10]
    assert s.take(2) == s._order(1)[:2]  # the next epoch starts only in a new call
    s2 = PromptSampler(10, 4, seed=0, epochs=1)
    s2.next(), s2.next(), s2.take(2)
    assert s2.take(1) is None and s2.next() is None


def test_signal_frac_judges_the_configured_metric_not_a_monitoring_reward():
    """A binary accuracy reward trained on, and the continuous IoU kept at weight 0 to watch: with
    the metric named, a group that is all hits has no signal although its IoUs differ."""
    b = _batch(["a", "b"], random.Random(0), p=1.0)
    for i, r in enumerate(b.rollouts):
        b.scored[r.key]["values"].update(rec_iou=0.6 + 0.01 * i, rec_acc=1.0 if r.prompt.id == "a" else float(i % 2))
    assert signal_frac(b, "rec_acc", 0.01) == 0.5  # only group b has hits and misses
    assert signal_frac(b, None, 0.01) == 1.0  # the sum of every accuracy reward: both groups vary
    # no metric named: the accuracy rewards the step trains on (rec_iou at weight 0 is only watched)
    weights = {"rec_format": 1.0, "rec_iou": 0.0, "rec_acc": 1.0}
    assert signal_frac(b, None, 0.01, weights) == 0.5
    assert signal_frac(b, None, 0.01, {"rec_iou": 0.0, "rec_acc": 0.0}) == 1.0  # none trained: all count
    kept = DynamicSampler(2, 0.01, 0).fill(b, lambda n: None, weights)
    assert kept.times["sampling/first_kept_frac"] == 0.5
