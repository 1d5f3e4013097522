"""Dynamic sampling against a source of known pass rates: kept groups have spread, the cost per kept
group is 1/q, refills never overshoot, the round cap completes the step instead of crashing."""
import math
import random

import pytest

from samples import Batch, Prompt, Rollout
from actors.group import shard
from data.sampler import PromptSampler
from trainer.sampling import DynamicSampler, group_spread, merge, signal_frac, task_metric

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



def test_oversample_auto_fills_most_steps_in_one_call_and_drops_the_surplus():
    """oversample: auto asks for B / rate prompts from the start (rate: the recent share of groups
    with spread), so most steps need no refill; the surplus is dropped and counted, never trained."""
    p, B, steps = 0.9, 4, 300
    q = 1 - p ** G - (1 - p) ** G  # 0.57: a prompt's chance to give a group with spread
    src, ds = Source(p, seed=2), DynamicSampler(B, 0.01, max_rounds=50, oversample="auto")
    exact_src, exact = Source(p, seed=2), DynamicSampler(B, 0.01, max_rounds=50)
    rounds = {"auto": 0, "exact": 0}
    for _ in range(steps):
        out = ds.fill(src.take(ds.first_count()), src.take)
        assert len(out.prompts) == B and all(s > 0.01 for s in group_spread(out, None).values())
        assert out.times["sampling/surplus"] == out.times["sampling/groups_with_signal"] - B >= 0
        rounds["auto"] += out.times["sampling/rounds"]
        ex = exact.fill(exact_src.take(B), exact_src.take)
        rounds["exact"] += ex.times["sampling/rounds"]
        assert ex.times["sampling/surplus"] == 0  # exact counts: never a surplus
    assert ds.rate == pytest.approx(q, abs=0.12) and exact.rate == pytest.approx(q, abs=0.12)
    assert ds.first_count() == math.ceil(B / ds.rate - 1e-9)
    assert rounds["auto"] < 0.5 * rounds["exact"]  # far fewer generation calls than exact refills


def _part(ids, kept):
    """Scored groups: spread where ``kept[i]`` (half hits), else all misses."""
    b = _batch(ids, random.Random(0), p=0.5)
    for pid, k in zip(ids, kept):
        for s in range(G):
            b.scored[(pid, s)]["values"]["rec_iou"] = (0.9 if s % 2 else 0.0) if k else 0.0
    return b


def test_streaming_fill_hands_each_engine_its_refill_as_its_shard_lands():
    """Two engines with 2 of the 4 first prompts each, B=4: engine 0 lands with 1 group kept while
    engine 1's 2 prompts are still out: it is handed 1 new prompt at once (4 - 1 kept - 2 out);
    each engine gets at most max_rounds refills; the step takes the first B groups with spread in
    data order."""
    ds = DynamicSampler(4, 0.01, max_rounds=1)
    step = ds.start(None, first_count=4)
    parts = [_part(["p0", "p1"], [True, False]), _part(["p2", "p3"], [False, False]),
             _part(["p4"], [True]), _part(["p5", "p6"], [True, True])]
    assert step.landed(parts[0], engine=0) == 1  # 4 - 1 kept - 2 still generating
    assert step.landed(parts[1], engine=1) == 2  # 4 - 1 kept - 1 (engine 0's refill)
    assert step.landed(parts[2], engine=0) == 0  # 4 - 2 - 2 out: none missing
    assert step.landed(parts[3], engine=1) == 0  # 4 kept
    out = step.result(merge(parts))
    assert [p.id for p in out.prompts] == ["p0", "p4", "p5", "p6"]
    assert out.times["sampling/rounds"] == 1 and out.times["sampling/refills"] == 2
    assert out.times["sampling/first_kept_frac"] == 0.25 and out.times["sampling/surplus"] == 0
    capped = ds.start(None, first_count=2)
    assert capped.landed(_part(["q0", "q1"], [False, False]), engine=0) == 4
    assert capped.landed(_part(["q2", "q3"], [False, False]), engine=0) == 0  # max_rounds=1 per engine
    assert capped.landed(_part(["q4", "q5"], [False, False]), engine=1) == 4  # the other engine still may


@pytest.mark.parametrize("oversample", [1.0, "auto"])
def test_streaming_in_any_landing_order_keeps_spread_and_exact_requests_never_overshoot(oversample):
    """Three engines whose shards land in random order, at a known pass rate: every kept group has
    spread, and with exact requests (oversample 1) no step ever generates a surplus group."""
    B, E, rng, src = 6, 3, random.Random(5), Source(0.8, seed=3)
    ds = DynamicSampler(B, 0.01, max_rounds=10, oversample=oversample)
    for _ in range(100):
        step = ds.start()
        out = [(e, src.take(len(ids))) for e, ids in enumerate(shard(list(range(step.first_count)), E)) if ids]
        landed = []
        while out:
            e, part = out.pop(rng.randrange(len(out)))
            landed.append(part)
            if n := step.landed(part, e):
                out.append((e, src.take(n)))
        b = step.result(merge(sorted(landed, key=lambda b: int(b.prompts[0].id[1:]))))
        assert len(b.prompts) == B and b.times["sampling/filled"] == 0
        assert all(s > 0.01 for s in group_spread(b, None).values())
        if oversample == 1.0:
            assert b.times["sampling/surplus"] == 0


def test_a_resumed_run_sizes_its_requests_as_the_uninterrupted_one():
    rows = [{"sampling/groups_with_signal": k, "sampling/prompts_generated": n} for k, n in [(1, 8)] * 5 + [(4, 8)] * 10]
    ds = DynamicSampler(4, 0.01, 3, oversample="auto")
    ds.replay(rows)
    assert ds.rate == 0.5 and ds.first_count() == 8  # the last 10 steps only
    assert DynamicSampler(4, 0.01, 3, oversample=1.5).first_count() == 6
    with pytest.raises(ValueError, match="oversample"):
        DynamicSampler(4, 0.01, 3, oversample=0.5)


def test_a_refused_prompt_counts_as_landed_so_the_refill_asks_for_what_is_missing():
    """A prompt an engine refused (samples.Refused) never lands as a group: without counting it the
    fill would think it still generating and ask for one prompt too few."""
    ds = DynamicSampler(4, 0.01, max_rounds=2)
    step = ds.start(None, first_count=4)
    part = _part(["p0", "p1"], [True, False])
    part.refused = {"p2": "UnidentifiedImageError: ..."}
    assert step.landed(part, engine=0) == 2  # 4 - 1 kept - 1 still out (p3); p2 is not out any more
