"""An HTML report of a run: curves as PNG and a gallery of val images with boxes drawn.

    python -m trainer.report RUN_DIR          # also written at the end of every run

Reads ``metrics.jsonl`` and ``eval/step_*.json`` of a run directory and writes
``report/report.html`` beside the PNGs: rewards, eval accuracy / mAP, KL, completion length,
boxes per answer, phase times; then, for the first and the last evaluation, val images with the
ground-truth boxes (green) and the predicted boxes (red) so a person sees what the model learned.
"""
from __future__ import annotations

import argparse
import html
import json
import pathlib

from data.images import open_rgb_or_none

GALLERY = 8
# counters of the machinery, not of the policy: their own chart, so the reward chart's scale is the rewards'
OPERATIONS = ("reward/queue_depth", "reward/worker_recoveries", "rollout/engine_restarts", "skipped_updates",
              "staleness/max", "staleness/mean")
CURVES = [
    ("rewards", "reward", lambda k: k.startswith("reward/") and k != "reward/std" and k not in OPERATIONS),
    ("eval", "eval", lambda k: k.split("/")[-1] in ("accuracy", "mean_iou", "mAP", "AP50", "precision@0.5", "recall@0.5")
     and k.startswith("eval/")),
    ("kl", "KL to the reference", lambda k: k in ("kl",)),
    ("length", "completion tokens", lambda k: k in ("completion_len/mean", "completion_len/max")),
    ("boxes", "boxes per answer", lambda k: k.startswith("boxes/")),
    ("loss", "loss and gradient", lambda k: k in ("loss", "grad_norm", "entropy")),
    ("time", "seconds per step", lambda k: k in ("time/step_s",)),
    ("rules", "scheduled reward weights and parameters", lambda k: k.startswith("rule/")),
    ("operations", "operations: queue, recoveries, restarts, skipped updates, staleness", lambda k: k in OPERATIONS),
]


def _rows(run: pathlib.Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _plot(rows: list[dict], name: str, title: str, pick, out: pathlib.Path, events=()) -> str | None:
    """One PNG of the picked keys over steps; ``events`` (step, text) are dashed vertical lines: the
    reward rule changes, drawn on every curve so their effect can be read off."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = sorted({k for r in rows for k in r if pick(k) and isinstance(r[k], (int, float))})
    if not keys:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    for k in keys:
        pts = [(r["step"], r[k]) for r in rows if k in r and isinstance(r[k], (int, float))]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) < 30 else None, ms=3, label=k)
    for i, (step, _) in enumerate(events):
        ax.axvline(step, color="grey", ls="--", lw=0.8, label="reward rule change" if i == 0 else None)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(out / f"{name}.png")
    plt.close(fig)
    return f"{name}.png"


def _draw(record: dict, out: pathlib.Path, tag: str) -> str | None:
    from PIL import Image, ImageDraw
    img = open_rgb_or_none(record.get("image"))
    if img is None:
        return None
    scale = max(1, 256 // max(img.size))
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(img)
    for color, boxes, labels, default in (("#00a000", record["gt"], record.get("gt_labels", []), "truth"),
                                          ("#e00000", record["pred"], record.get("pred_labels", []), "answer")):
        for b, label in zip(boxes, list(labels) + [""] * (len(boxes) - len(labels))):
            if b and all(isinstance(v, (int, float)) for v in b):
                x1, y1, x2, y2 = (max(-10_000.0, min(10_000.0, v * scale)) for v in b)
                if x2 > x1 and y2 > y1:
                    draw.rectangle([x1, y1, x2, y2], outline=color, width=2)
                    # the label inside the box's top-left corner (OVD: the class; REC: truth / answer)
                    draw.text((x1 + 4, y1 + 3), str(label or default)[:24], fill=color)
    name = f"{tag}_{abs(hash(record['id'])) % 10**8}.png"
    img.save(out / name)
    return name


def build_report(run_dir) -> pathlib.Path:
    """Write ``report/report.html`` for ``run_dir``; returns its path."""
    run = pathlib.Path(run_dir)
    out = run / "report"
    out.mkdir(parents=True, exist_ok=True)
    rows = _rows(run)
    train_rows = [r for r in rows if "reward/mean" in r]
    eval_rows = [r for r in rows if any(k.startswith("eval/") for k in r)]
    # a change logged at step s takes effect from step s + 1: the line marks where it starts
    events = [(r["step"] + 0.5, e) for r in train_rows for e in r.get("rule_events", [])]
    plots = []
    for name, title, pick in CURVES:
        png = _plot(eval_rows if name == "eval" else train_rows, name, title, pick, out, events)
        if png:
            plots.append((title, png))
    evals = sorted((run / "eval").glob("step_*.json")) if (run / "eval").is_dir() else []
    picked = [evals[0], evals[-1]] if len(evals) > 1 else evals
    sections = []
    for path in picked:
        data = json.loads(path.read_text())
        step = int(path.stem.split("_")[1])
        cards = []
        for rec in data["records"][:GALLERY]:
            png = _draw(rec, out, f"s{step}")
            if png is None:
                continue
            detail = (f"IoU {rec['iou']:.2f}" if "iou" in rec else
                      f"{len(rec['pred'])} predicted / {len(rec['gt'])} true boxes")
            cards.append(f'<figure><img src="{png}" alt="{html.escape(rec["id"])}"><figcaption>'
                         f'{html.escape(rec["question"][-90:])}<br><b>{detail}</b><br><code>'
                         f'{html.escape(rec["completion"][:160])}</code></figcaption></figure>')
        metrics = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in data["metrics"].items())
        sections.append(f"<h2>Validation at step {step}</h2><p>{html.escape(metrics)}</p>"
                        f"<div class=gallery>{''.join(cards)}</div>")
    summary = run / "summary.json"
    head = html.escape(summary.read_text()) if summary.exists() else "(run in progress or interrupted)"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Run report: {html.escape(run.name)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1300px}} img{{max-width:100%}}
.plots{{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:1em}}
.gallery{{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:1em}}
figure{{margin:0;border:1px solid #ddd;padding:.5em}} figcaption{{font-size:12px}} code{{font-size:11px;word-break:break-all}}</style>
</head><body><h1>Run report: {html.escape(str(run))}</h1>
<p>Green: ground truth. Red: the model's boxes (rescaled to original pixels).</p><pre>{head}</pre>
{'<h2>Reward rule changes</h2><ul>' + ''.join(f'<li>after step {int(st)}: {html.escape(e)}</li>' for st, e in events) + '</ul>' if events else ''}
<h2>Curves</h2><div class=plots>{''.join(f'<figure><img src="{p}" alt="{html.escape(t)}"><figcaption>{html.escape(t)}</figcaption></figure>' for t, p in plots)}</div>
{''.join(sections) or '<p>No evaluation yet (trainer.eval_steps=0?).</p>'}
<p id=status>checking images...</p>
<script>window.addEventListener('load', () => {{
  const imgs = [...document.images]; const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.getElementById('status').textContent = `images rendered: ${{ok}} of ${{imgs.length}}`;
}});</script></body></html>"""
    path = out / "report.html"
    path.write_text(page)
    return path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Write the HTML report of a run directory.")
    ap.add_argument("run_dir")
    print(build_report(ap.parse_args(argv).run_dir))


if __name__ == "__main__":
    main()
