"""Deterministic prompt order over epochs, with a position that can be saved and restored."""
from __future__ import annotations

import random


class PromptSampler:
    """Yields batches of prompt indices: a seeded permutation per epoch, never repeating or
    skipping an index within an epoch. ``state()`` / ``load_state()`` give exact resume."""

    def __init__(self, n: int, batch_size: int, seed: int = 0, shuffle: bool = True, epochs: int = 1):
        if n < batch_size:
            raise ValueError(f"only {n} training prompts for {batch_size} per step: lower trainer.prompts_per_step")
        self.n, self.batch_size, self.seed, self.shuffle, self.epochs = n, batch_size, seed, shuffle, epochs
        self.epoch, self.pos = 0, 0

    def _order(self, epoch: int) -> list[int]:
        order = list(range(self.n))
        if self.shuffle:
            random.Random(f"{self.seed}-{epoch}").shuffle(order)
        return order

    def steps_available(self) -> int:
        return (self.n // self.batch_size) * self.epochs

    def steps_for(self, max_steps: int) -> int:
        """``max_steps``, or fewer when the epochs run out first -- said in one line, as a run that
        stops short of what was asked should not be silent."""
        available = self.steps_available()
        if max_steps > available:
            print(f"trainer.max_steps={max_steps}, but {self.epochs} epoch(s) of {self.n} prompts at "
                  f"{self.batch_size} a step give {available} steps: training {available} "
                  f"(raise trainer.epochs to {-(-max_steps // (self.n // self.batch_size))} for all {max_steps})",
                  flush=True)
        return min(max_steps, available)

    def next(self) -> list[int] | None:
        """The next batch, or None when the epochs are used up (a short epoch tail is dropped)."""
        if self.pos + self.batch_size > self.n:
            self.epoch, self.pos = self.epoch + 1, 0
        if self.epoch >= self.epochs:
            return None
        batch = self._order(self.epoch)[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return batch

    def take(self, n: int) -> list[int] | None:
        """Up to ``n`` more indices in the same order (dynamic sampling's refills), never crossing
        into the next epoch within one call (so no index repeats within a step); None when used up."""
        if self.pos >= self.n:
            self.epoch, self.pos = self.epoch + 1, 0
        if self.epoch >= self.epochs or n <= 0:
            return None
        out = self._order(self.epoch)[self.pos:self.pos + n]
        self.pos += len(out)
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state(self, state: dict) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
