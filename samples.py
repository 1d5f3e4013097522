"""The types that travel between the roles, in the order of a step:

    Prompt     a row of the data: image paths (not pixels), question, solution, task
    Rollout    one sampled completion of a prompt, from a rollout engine: token ids, text, log-probs
    Refused    a prompt an engine could not take (its image unreadable, too long): dropped, counted
    Batch      one step's prompts with their G scored rollouts each (reward workers' scores)
    TrainItem  the learner's view of one rollout: token ids, image paths, advantage, engine log-probs

Plain dataclasses of plain values (paths and token ids, never tensors), so they pickle cheaply
through Ray and round-trip through a checkpoint's JSON; nothing in the project is imported here.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Prompt:
    """One training/eval example. Paths are absolute and confined to their image folder."""
    id: str                                   # unique within a load (row id, or id@file:line on a clash)
    images: tuple[str, ...]
    image_sizes: tuple[tuple[int, int], ...]  # original (w, h) of each image
    question: str                             # the human turn, "<image>" markers removed
    solution: str                             # ground truth text, exactly as in the row
    task: str                                 # rec | ovd | qa (data.prompts.TEMPLATES)
    accu_method: str | None = None            # the row's accuracy reward, if it names one
    source: str = ""                          # file:line


@dataclass
class Rollout:
    """One sampled completion of one prompt."""
    prompt: Prompt
    sample: int                       # 0..G-1 within its group
    prompt_token_ids: list[int]
    completion_token_ids: list[int]
    completion_text: str
    finish_reason: str
    logprobs: list[float]             # engine log-prob of each completion token
    input_sizes: tuple[tuple[int, int], ...]  # (w, h) of the frame boxes are written in, per image (models.answer_frame)
    engine: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, int]:
        return (self.prompt.id, self.sample)


@dataclass(frozen=True)
class Refused:
    """A prompt an engine refused for a reason of its own (its image unreadable by the time it was
    generated, more tokens than the engine's context): the prompt is dropped from its step and
    counted, and the run goes on. Errors of the engine itself are not this: they replace it."""
    prompt: Prompt
    reason: str


@dataclass
class Batch:
    """One step's prompts with their G scored samples each, in prompt order then sample order."""
    step: int                     # 0-based index of the step that trains it
    prompts: list                 # Prompt
    rollouts: list                # Rollout, grouped by prompt
    scored: dict                  # (prompt id, sample) -> {"total", "values"}
    failures: dict                # "reward/reason" -> parse-failure count
    version: int                  # updates the generating weights had seen
    times: dict = field(default_factory=dict)  # rollout / reward seconds, queue depth, engine restarts
    rules: dict = field(default_factory=dict)  # the scheduled reward values it was scored with (rule/...)
    refused: dict = field(default_factory=dict)  # prompt id -> why an engine refused it (dropped, counted)


@dataclass
class TrainItem:
    """One completion to learn from: the learner's whole view of a rollout."""
    key: tuple[str, int]
    prompt_token_ids: list[int]
    completion_token_ids: list[int]
    images: tuple[str, ...]
    advantage: float
    engine_logprobs: list[float]
