"""bench/loop_model.py on cases worked by hand (the numbers in the comments are the arithmetic)."""
import pytest

from bench.loop_model import Layout, Rates, Workload, generate_seconds, lm_tokens, predict, train_seconds

W = Workload(prompts=2, G=4, prompt_tokens=10, completion_tokens=5, params_b=0.001, bytes_per_param=2, beta=0.04)
R = Rates(decode_step_s=0.1, decode_seq_s=0.01, prefill_tokens_per_s=100, max_seqs=16, train_tokens_per_s=60,
          forward_tokens_per_s=120, optimizer_s=0.1, reward_s_per_sample=0.05, sync_bytes_per_s=2e7,
          sync_latency_s=0.05, allreduce_bytes_per_s=1e7)


def test_a_synchronous_step_is_the_sum_of_its_phases():
    p = predict(W, R, Layout(engines=1, learner_ranks=1, reward_workers=2))
    # generate: prefill 2 prompts x 10 tokens / 100 = 0.2; decode 5 steps x (0.1 + 0.01 x 8 seqs) = 0.9
    assert p.generate_s == pytest.approx(1.1)
    assert p.reward_s == pytest.approx(0.2) and p.reward_exposed_s == pytest.approx(0.2)  # 8 x 0.05 / 2
    # train: 2 x (10 + 4 x 5) = 60 tokens / 60 = 1.0, reference forward 60 / 120 = 0.5, optimizer 0.1
    assert p.train_s == pytest.approx(1.6)
    assert p.sync_s == pytest.approx(0.15)  # 0.05 + 1e6 params x 2 bytes / 2e7
    assert p.step_s == pytest.approx(3.05) and p.samples_per_s == pytest.approx(8 / 3.05)
    assert p.critical_path == ("generate", "reward", "train", "sync") and p.bottleneck == "learner"
    assert p.busy["engines"] == pytest.approx(1.1 / 3.05) and p.busy["learner"] == pytest.approx(1.6 / 3.05)


def test_an_asynchronous_step_overlaps_the_rollout_with_the_update():
    p = predict(W, R, Layout(engines=1, learner_ranks=1, reward_workers=2, staleness=1))
    assert p.step_s == pytest.approx(max(1.1 + 0.2, 1.6) + 0.15)  # 1.75
    assert p.critical_path == ("train", "sync")
    slow_engine = Rates(**{**R.__dict__, "decode_step_s": 0.5})  # decode 5 x (0.5 + 0.08) = 2.9
    q = predict(W, slow_engine, Layout(engines=1, learner_ranks=1, reward_workers=2, staleness=2))
    assert q.step_s == pytest.approx(0.2 + 2.9 + 0.2 + 0.15) and q.critical_path == ("generate", "reward", "sync")
    assert q.bottleneck == "engines"


def test_engines_split_the_groups_and_decode_in_waves_of_max_seqs():
    # 2 engines: one prompt each, 4 sequences: 0.1 prefill + 5 x (0.1 + 0.04) = 0.8
    assert generate_seconds(W, R, 2) == pytest.approx(0.8)
    # 3 engines for 2 prompts: the busiest still has one
    assert generate_seconds(W, R, 3) == pytest.approx(0.8)
    # 8 sequences, 3 at a time: waves of 3, 3, 2 -> 5 x (0.13 + 0.13 + 0.12) = 1.9, plus 0.2 prefill
    assert generate_seconds(W, Rates(**{**R.__dict__, "max_seqs": 3}), 1) == pytest.approx(2.1)
    # the last shard's scoring is what follows generation: 0.2 / 2 engines
    assert predict(W, R, Layout(engines=2, learner_ranks=1, reward_workers=2)).reward_exposed_s == pytest.approx(0.1)


def test_dynamic_sampling_pays_for_its_refill_rounds():
    ds = Workload(**{**W.__dict__, "dynamic_sampling": True, "signal_frac": 0.5, "max_rounds": 3})
    # first round 1.1; refill k happens with 1 - (1 - 0.5^k)^2 and has 2 x 0.5^k groups expected:
    # k=1: 0.75 x 5 x 0.1 + 1 x (4 x 5 x 0.01 + 10 / 100) = 0.675; k=2: 0.4375 x 0.5 + 0.5 x 0.3 = 0.36875;
    # k=3: 0.234375 x 0.5 + 0.25 x 0.3 = 0.1921875
    assert generate_seconds(ds, R, 1) == pytest.approx(1.1 + 0.675 + 0.36875 + 0.1921875)
    p = predict(ds, R, Layout(engines=1, learner_ranks=1, reward_workers=2))
    assert p.reward_s == pytest.approx(2 * 1.875 * 4 * 0.05 / 2) and p.train_s == pytest.approx(1.6)  # trains 2 groups
    none = Workload(**{**ds.__dict__, "signal_frac": 0.0})  # no group ever has spread: every round in full
    assert generate_seconds(none, R, 1) == pytest.approx(4 * 1.1)
    assert predict(Workload(**{**W.__dict__, "signal_frac": 0.5}), R, Layout(1, 1, 2)).generate_s == pytest.approx(1.1)


def test_prompt_sharing_data_parallelism_and_zero3_change_the_update():
    assert lm_tokens(W) == 60 and lm_tokens(Workload(**{**W.__dict__, "prefix_sharing": False})) == 120  # 8 x 15
    # 2 ranks: 30 tokens each -> 0.5 + 0.25 + 0.1, and 2 x 1/2 x 2e6 bytes / 1e7 = 0.2 of all-reduce
    assert train_seconds(W, R, 2, zero_stage=2) == pytest.approx(1.05)
    assert train_seconds(W, R, 2, zero_stage=3) == pytest.approx(0.85 + 0.3)  # 3 x 1/2 x 2e6 / 1e7
    no_ref = Workload(**{**W.__dict__, "beta": 0.0, "old_logp_pass": True})  # one forward pass either way
    assert train_seconds(no_ref, R, 1, 2) == pytest.approx(1.6)
    assert train_seconds(Workload(**{**W.__dict__, "beta": 0.0}), R, 1, 2) == pytest.approx(1.1)


def test_evaluation_is_amortised_and_bad_layouts_are_refused():
    ev = Workload(**{**W.__dict__, "eval_every": 10, "eval_s": 5.0})
    p = predict(ev, R, Layout(1, 1, 2))
    assert p.step_s == pytest.approx(3.05 + 0.5) and p.critical_path[-1] == "evaluate"
    assert Layout(engines=3, learner_ranks=4, devices_per_engine=2).devices == 10
    with pytest.raises(ValueError, match="at least 1"):
        predict(W, R, Layout(engines=0, learner_ranks=1))
    with pytest.raises(ValueError, match="signal_frac"):
        predict(Workload(**{**W.__dict__, "signal_frac": 1.5}), R, Layout(1, 1))


def test_a_wave_decodes_as_long_as_its_longest_completion():
    long_tail = Workload(**{**W.__dict__, "longest_tokens": 9})
    # prefill 0.2; 9 decode steps x 0.1 fixed + 8 sequences x 5 tokens x 0.01 = 0.9 + 0.4
    assert generate_seconds(long_tail, R, 1) == pytest.approx(1.5)
    assert generate_seconds(W, R, 1) == pytest.approx(1.1)  # longest 0: the mean, 5 steps


def test_the_vision_tower_runs_per_prompt_with_sharing_and_per_sample_without():
    seen = Rates(**{**R.__dict__, "vision_s_per_image": 0.1})
    # sharing: 2 images x 0.1 x (1 + a reference pass at 60/120 of the cost) = 0.3 on top of 1.6
    assert train_seconds(W, seen, 1, 2) == pytest.approx(1.9)
    unshared = Workload(**{**W.__dict__, "prefix_sharing": False})
    # 8 images x 0.1 x 1.5 = 1.2, and 120 tokens: 2.0 + 1.0 + 0.1
    assert train_seconds(unshared, seen, 1, 2) == pytest.approx(4.3)
    two_images = Workload(**{**W.__dict__, "images_per_prompt": 2, "beta": 0.0})  # 4 images x 0.1, no reference
    assert train_seconds(two_images, seen, 2, 2) == pytest.approx(0.5 + 0.2 + 0.1 + 0.2)  # per rank: half of each


def test_on_shared_cores_an_asynchronous_step_is_the_sum_of_its_work():
    own = predict(W, R, Layout(engines=1, learner_ranks=1, reward_workers=2, staleness=1))
    shared = predict(W, R, Layout(engines=1, learner_ranks=1, reward_workers=2, staleness=1, shared_cores=2))
    assert own.step_s == pytest.approx(1.75) and shared.step_s == pytest.approx(3.05)  # 1.1 + 0.2 + 1.6 + 0.15
    assert shared.critical_path == ("generate", "reward", "train", "sync")
    # two engines, one prompt each: fixed part 5 x 0.1 = 0.5 each, prefill + tokens 0.1 + 5 x 0.01 x 4 = 0.3 each;
    # on one free core the fixed parts queue (1.0 + 0.6), on two they run side by side (0.5 + 0.6)
    assert generate_seconds(W, R, 2, lanes=1) == pytest.approx(1.6)
    assert generate_seconds(W, R, 2, lanes=2) == pytest.approx(1.1) == generate_seconds(W, R, 1, lanes=2)
    three = Workload(**{**W.__dict__, "prompts": 3})  # shares 2 + 1: fixed 0.5 each, work 0.6 + 0.3
    assert generate_seconds(three, R, 2, lanes=1) == pytest.approx(1.9)
    assert generate_seconds(three, R, 2, lanes=2) == pytest.approx(1.4)
    sync2 = predict(W, R, Layout(engines=2, learner_ranks=1, reward_workers=2, shared_cores=2))  # the learner waits
    asyn2 = predict(W, R, Layout(engines=2, learner_ranks=1, reward_workers=2, staleness=1, shared_cores=2))
    assert sync2.generate_s == pytest.approx(1.1) and asyn2.generate_s == pytest.approx(1.6)  # the learner takes a core
