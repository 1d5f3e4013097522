"""What a short run costs besides its work: the same stages run as ``orchestrator.py`` processes of their
own and in one ``trainer.session.Session`` (one process, one Ray, the engine and learner processes
rebuilt from run to run), in the same run, alternating the order of the two ways by round.

    python -m bench.session [--rounds 3] [--out outputs/bench_session]

Each round runs, each way: ``mode=eval`` of ``conf=rec``'s model on 16 images, 2 steps of ``mode=sft``,
then 2 GRPO steps (``conf=rec``) -- the kinds of stage ``bench.learning`` runs twenty-odd of.
Prints one row per stage with both times and their ratio, and the totals.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import time

from bench.common import machine
from bench.stages import one_process, prepare_out, run_stage

STAGES = {
    "eval": (["mode=eval", "conf=rec", "eval.max_samples=16"], "eval_results.json"),
    "sft": (["mode=sft", "conf=rec", "trainer.max_steps=2", "learner.beta=0"], "checkpoints/step_000002/hf"),
    "grpo": (["conf=rec", "trainer.max_steps=2", "trainer.eval_steps=0"], "summary.json"),
}


def _round(out, way: str, r: int) -> dict[str, float]:
    log: list[dict] = []
    for name, (overrides, done) in STAGES.items():
        run_stage(f"{way}_r{r}_{name}", out, overrides, done, log)
    return {name: entry["seconds"] for name, entry in zip(STAGES, log)}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="outputs/bench_session")
    args = ap.parse_args(argv)
    out = prepare_out(args.out, fresh=True)
    times: dict[str, list[dict]] = {"processes": [], "session": []}
    t0 = time.perf_counter()
    with one_process(out) as session:
        for r in range(args.rounds):
            order = ("processes", "session") if r % 2 == 0 else ("session", "processes")
            for way in order:
                if way == "session":
                    times[way].append(_round(out, way, r))
                else:
                    with one_process(out, enabled=False):  # these stages: processes of their own
                        times[way].append(_round(out, way, r))
        reused = session.reused
    rows = []
    for name in STAGES:
        s = [t[name] for t in times["session"]]
        rows.append({"stage": name, "processes_s": statistics.median(t[name] for t in times["processes"]),
                     "session_first_s": s[0], "session_s": statistics.median(s[1:] or s)})
    m = machine()
    print(f"\n{m['cpu']}, {m['cores']} cores, flags: {m['flags'] or 'none of the bf16 ones'}; {args.rounds} rounds "
          f"(medians; in the session, of the rounds after the first, which also starts Ray and the roles); "
          f"{reused} processes reused; {(time.perf_counter() - t0) / 60:.1f} min\n")
    print("| stage | own process s | in the session s | ratio | session, first round s |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['stage']} | {row['processes_s']:.1f} | {row['session_s']:.1f} | "
              f"{row['processes_s'] / row['session_s']:.2f}x | {row['session_first_s']:.1f} |")
    tp, ts = sum(r["processes_s"] for r in rows), sum(r["session_s"] for r in rows)
    print(f"| all three | {tp:.1f} | {ts:.1f} | {tp / ts:.2f}x | {sum(r['session_first_s'] for r in rows):.1f} |")
    shutil.rmtree(out / "ray", ignore_errors=True)
    return rows


if __name__ == "__main__":
    main()
