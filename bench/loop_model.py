"""A model of one training step of this system, for planning layouts past one machine.

    from bench.loop_model import Workload, Rates, Layout, predict
    p = predict(Workload(prompts=16, G=8, prompt_tokens=600, completion_tokens=256, params_b=3.0),
                rates, Layout(engines=4, learner_ranks=4, reward_workers=4, staleness=1))
    p.step_s, p.samples_per_s, p.busy, p.critical_path, p.bottleneck

Pure Python (no Ray, no torch): what the loop does, as arithmetic on measured component rates.

- **Generation.** The step's groups are dealt out to the engines (``ceil(groups / engines)`` each);
  an engine prefills each prompt once (its G samples share the prompt's cache) and then decodes all
  its sequences together, ``max_seqs`` at a time: a wave takes as many decode steps as its longest
  completion (``longest_tokens``), each costing ``decode_step_s``, plus ``decode_seq_s`` for every
  token it decodes (``completion_tokens`` per sequence on average).
  Dynamic sampling refills an engine's missing groups in up to ``max_rounds`` further rounds, each
  a generation of its own: with a share ``signal_frac`` of groups keeping a reward spread, round k
  generates ``(1 - signal_frac)^k`` of the engine's first share in expectation (oversampling off,
  the project's default; ``generate_seconds`` has the expectation).
- **Scoring.** ``reward_s_per_sample`` per sample on ``reward_workers`` workers; an engine's shard is
  scored as it lands, so only the last shard's scoring (``1 / engines`` of it) follows generation.
- **Training.** Language-model tokens per step: with prompt sharing each group's prompt once plus its
  G completions, without it every sample's prompt and completion; split evenly over the learner
  ranks, at ``train_tokens_per_s`` per rank for forward + backward, the vision tower at
  ``vision_s_per_image`` (once per prompt's image with prompt sharing, once per sample's without),
  plus one forward pass at
  ``forward_tokens_per_s`` for the reference policy (``beta > 0``) and one for old log-probs (when the
  loss needs them), plus ``optimizer_s``, plus the gradient exchange of data parallelism (ring
  all-reduce: ``2 (n-1)/n`` of the gradient bytes; ZeRO-3 also gathers the parameters: ``3 (n-1)/n``).
- **Weight sync.** ``sync_latency_s`` plus the weights' bytes over ``sync_bytes_per_s`` (one broadcast
  reaches every engine).
- **Schedules.** Synchronous (``staleness`` 0): generate, score, train and sync one after the other.
  Asynchronous (``staleness`` K >= 1): the engines generate step t+K while the learner trains step t,
  and the weights go out once both are done: ``max(generate + score, train) + sync``, when every
  role has devices of its own. Where the roles share one machine's cores (``Layout.shared_cores``:
  how many, a CPU box), overlapped work adds up instead (the rates were measured with every core
  per phase): the asynchronous step is the synchronous sum, and several engines add up their
  prefill and per-token compute, while their decode steps' fixed part (one core's work each) runs
  side by side on the cores the learner leaves free (all of them when synchronous). Evaluation
  every ``eval_every`` steps adds ``eval_s / eval_every`` to either.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Workload:
    """What one step does: ``prompts`` groups of ``G`` samples, token lengths, the model's size."""
    prompts: int
    G: int
    prompt_tokens: float           # per prompt, image tokens included
    completion_tokens: float       # mean per sample
    params_b: float                # model parameters, billions (weights synced, gradients exchanged)
    bytes_per_param: int = 2       # bf16 weights and gradients
    longest_tokens: float = 0.0    # the longest completion of an engine's wave (decode steps); 0: the mean
    images_per_prompt: int = 1
    beta: float = 0.04             # > 0: a reference-policy forward pass
    old_logp_pass: bool = False    # the loss needs the policy's own log-probs before the update
    prefix_sharing: bool = True
    signal_frac: float = 1.0       # share of generated groups whose rewards differ
    dynamic_sampling: bool = False
    max_rounds: int = 3            # dynamic sampling's refills per engine and step
    eval_every: int = 0
    eval_s: float = 0.0


@dataclass(frozen=True)
class Rates:
    """Component rates, measured (``bench.calibrate``) or assumed for a named GPU."""
    decode_step_s: float           # an engine's decode step: fixed part
    decode_seq_s: float            # ... and per running sequence
    prefill_tokens_per_s: float    # an engine's prefill
    max_seqs: int                  # sequences an engine decodes at once
    train_tokens_per_s: float      # a learner rank, forward + backward
    forward_tokens_per_s: float    # a learner rank, forward only (reference / old log-probs)
    optimizer_s: float             # a learner rank's optimizer step and fixed per-step cost
    reward_s_per_sample: float     # one reward worker
    sync_bytes_per_s: float        # learner -> engines weight link
    sync_latency_s: float
    allreduce_bytes_per_s: float = float("inf")  # between learner ranks
    vision_s_per_image: float = 0.0  # a learner rank's vision tower, forward + backward, per image


@dataclass(frozen=True)
class Layout:
    engines: int
    learner_ranks: int
    reward_workers: int = 1
    staleness: int = 0             # trainer.max_staleness: 0 synchronous, K >= 1 asynchronous
    zero_stage: int = 2
    devices_per_engine: int = 1    # tensor parallel size (the rates are per engine at this size)
    shared_cores: int = 0          # > 0: every role on this many cores of one machine (a CPU box)

    @property
    def devices(self) -> int:
        return self.engines * self.devices_per_engine + self.learner_ranks


@dataclass(frozen=True)
class Prediction:
    step_s: float
    samples_per_s: float
    generate_s: float              # the slowest engine's generation
    reward_s: float                # one worker's scoring (all of it, overlapped or not)
    reward_exposed_s: float        # the part after generation
    train_s: float                 # one learner rank
    sync_s: float
    eval_s: float                  # per step, amortised
    busy: dict                     # role -> share of the step it works
    critical_path: tuple           # the phases whose sum is the step
    bottleneck: str                # the busiest role



def refill_factor(w: Workload) -> float:
    """Groups generated per group trained: 1, or with dynamic sampling ``sum_k (1 - signal_frac)^k``
    over the first round and ``max_rounds`` refills (each refill replaces the groups still missing)."""
    if not w.dynamic_sampling:
        return 1.0
    return sum((1 - w.signal_frac) ** k for k in range(w.max_rounds + 1))


def generate_seconds(w: Workload, r: Rates, engines: int, lanes: int = 0) -> float:
    """The step's generation, refills included: with devices of its own per engine (``lanes`` 0),
    the slowest engine's time for its share of the groups. On shared cores, ``lanes`` engines at a
    time run their decode steps' fixed part (one core's work each: scheduling, sampling, Python)
    side by side, while the prefill and per-token compute of all engines share the cores and add up."""
    if not lanes:
        return sum(engine_seconds(w, r, math.ceil(w.prompts / engines - 1e-9)))
    shares = [n for n in (w.prompts // engines + (i < w.prompts % engines) for i in range(engines)) if n]
    parts = [engine_seconds(w, r, n) for n in shares]
    return max(f for f, _ in parts) * math.ceil(len(parts) / lanes) + sum(v for _, v in parts)


def engine_seconds(w: Workload, r: Rates, n: int) -> tuple[float, float]:
    """One engine's expected time for ``n`` groups, refills included, as (its decode steps' fixed
    part, its prefill and per-token part).

    Its first round decodes its ``n`` groups' sequences in waves of ``max_seqs``. Refill round k
    happens when any of the ``n`` slots still lacks a group with spread (probability
    ``1 - (1 - q^k)^n``, ``q = 1 - signal_frac``) and then pays a decode step's fixed part for each
    token; its sequences (``n q^k G`` expected) pay their per-sequence part and prefill."""
    longest = w.longest_tokens or w.completion_tokens
    seqs, fixed, work = n * w.G, 0.0, n * w.prompt_tokens / r.prefill_tokens_per_s
    while seqs > 0:
        wave = min(seqs, r.max_seqs)
        fixed += longest * r.decode_step_s
        work += w.completion_tokens * r.decode_seq_s * wave
        seqs -= wave
    if w.dynamic_sampling:
        q = 1 - w.signal_frac
        for k in range(1, w.max_rounds + 1):
            happens, groups = 1 - (1 - q ** k) ** n, n * q ** k
            fixed += happens * longest * r.decode_step_s
            work += groups * (w.G * w.completion_tokens * r.decode_seq_s + w.prompt_tokens / r.prefill_tokens_per_s)
    return fixed, work


def lm_tokens(w: Workload) -> float:
    """Language-model tokens the learner computes per step (all ranks)."""
    if w.prefix_sharing:
        return w.prompts * (w.prompt_tokens + w.G * w.completion_tokens)
    return w.prompts * w.G * (w.prompt_tokens + w.completion_tokens)


def vision_images(w: Workload) -> float:
    """Images the learner's vision tower encodes per step (all ranks): each prompt's once with prompt
    sharing, each sample's without."""
    return w.prompts * w.images_per_prompt * (1 if w.prefix_sharing else w.G)


def train_seconds(w: Workload, r: Rates, ranks: int, zero_stage: int) -> float:
    """One learner rank's step: its share of the tokens and images, the extra forward passes, the
    optimizer and the exchange of gradients (and, under ZeRO-3, parameters) between ranks. A forward
    pass over the images costs the vision tower's forward + backward scaled like the tokens' passes."""
    tokens = lm_tokens(w) / ranks
    forwards = (w.beta > 0) + w.old_logp_pass
    vision = vision_images(w) / ranks * r.vision_s_per_image * (1 + forwards * r.train_tokens_per_s
                                                                / r.forward_tokens_per_s)
    comm = 0.0
    if ranks > 1:
        volume = (3 if zero_stage == 3 else 2) * (ranks - 1) / ranks * w.params_b * 1e9 * w.bytes_per_param
        comm = volume / r.allreduce_bytes_per_s
    return tokens / r.train_tokens_per_s + forwards * tokens / r.forward_tokens_per_s + vision + r.optimizer_s + comm


def predict(w: Workload, r: Rates, layout: Layout) -> Prediction:
    """Step time, each role's busy share, samples per second and the critical path of ``layout``."""
    if min(layout.engines, layout.learner_ranks, layout.reward_workers, w.prompts, w.G) < 1:
        raise ValueError("engines, learner ranks, reward workers, prompts and G must each be at least 1")
    if not 0 <= w.signal_frac <= 1:
        raise ValueError(f"signal_frac must be in [0, 1], got {w.signal_frac}")
    lanes = 0  # engines' fixed parts side by side: on devices of their own, all; on shared cores, what is free
    if layout.shared_cores:
        lanes = max(1, layout.shared_cores - (layout.learner_ranks if layout.staleness else 0))
    gen = generate_seconds(w, r, layout.engines, lanes)
    reward = w.prompts * refill_factor(w) * w.G * r.reward_s_per_sample / layout.reward_workers
    reward_exposed = reward / layout.engines
    train = train_seconds(w, r, layout.learner_ranks, layout.zero_stage)
    sync = r.sync_latency_s + w.params_b * 1e9 * w.bytes_per_param / r.sync_bytes_per_s
    ev = w.eval_s / w.eval_every if w.eval_every else 0.0
    rollout_side = gen + reward_exposed
    if layout.staleness == 0 or layout.shared_cores:
        step = rollout_side + train + sync + ev
        path = ("generate", "reward", "train", "sync")
    else:
        step = max(rollout_side, train) + sync + ev
        path = (("generate", "reward") if rollout_side >= train else ("train",)) + ("sync",)
    path += ("evaluate",) if ev else ()
    busy = {"engines": gen / step, "learner": train / step, "reward": reward / step, "sync": sync / step}
    bottleneck = max(("engines", "learner", "reward"), key=busy.get)
    return Prediction(step, w.prompts * w.G / step, gen, reward, reward_exposed, train, sync, ev, busy, path,
                      bottleneck)
