"""Progress in a log file: periodic plain lines, not one line per update."""
import io

from trainer.progress import LineProgress, progress


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_a_log_gets_a_line_every_interval_and_one_at_the_end():
    out, clock = io.StringIO(), Clock()
    bar = progress(range(2, 10), desc="grpo", total=10, initial=2, stream=out, every=30.0, clock=clock)
    assert isinstance(bar, LineProgress)  # StringIO is not a terminal
    for step in bar:
        bar.set_postfix(reward=f"{step / 10:.3f}")
        clock.t += 10.0  # each step takes 10 s: a line after every third step
    lines = out.getvalue().splitlines()
    assert lines == [
        "grpo: 5/10 (50%), 0m30s elapsed, 10.00 s/it, eta 0m50s | reward=0.400",
        "grpo: 8/10 (80%), 1m00s elapsed, 10.00 s/it, eta 0m20s | reward=0.700",
        "grpo: 10/10 (100%), 1m20s elapsed, 10.00 s/it, eta 0m00s | reward=0.900",
    ]


def test_a_loop_left_early_still_reports_where_it_stopped():
    out, clock = io.StringIO(), Clock()
    bar = progress(range(100), desc="sft", stream=out, every=1e9, clock=clock)
    for step in bar:
        clock.t += 2.0
        if step == 3:
            break
    bar.close()
    assert out.getvalue().splitlines() == ["sft: 3/100 (3%), 0m08s elapsed, 2.67 s/it, eta 4m19s"]


def test_a_terminal_gets_a_tqdm_bar():
    class Tty(io.StringIO):
        def isatty(self):
            return True
    from tqdm import tqdm
    bar = progress(range(3), desc="x", stream=Tty())
    assert isinstance(bar, tqdm) and list(bar) == [0, 1, 2]
