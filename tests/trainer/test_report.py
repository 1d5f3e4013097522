"""The HTML report: curves and a gallery, rendered by a real headless browser."""
import json
import os
import shutil
import subprocess

import pytest
from PIL import Image

from trainer.report import build_report


def _fake_run(run, images):
    rows = [{"step": s, "reward/mean": 0.1 * s, "reward/rec_iou": 0.05 * s, "kl": 0.01 * s, "loss": 0.2,
             "completion_len/mean": 30 + s, "boxes/pred_per_answer": 1.0, "boxes/gt_per_answer": 1.0,
             "time/step_s": 3.0, "reward/queue_depth": 2, "reward/worker_recoveries": 0, "rule/rec_iou_thresh/iou_threshold": 0.5 if s <= 3 else 0.75} for s in range(1, 6)]
    rows[2]["rule_events"] = ["reward.schedules.rec_iou_thresh.iou_threshold: 0.5 -> 0.75 from step 4 (step schedule)"]
    rows += [{"step": s, "eval/accuracy": 0.1 + 0.05 * s, "eval/mean_iou": 0.2} for s in (0, 5)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "eval").mkdir()
    for s in (0, 5):
        recs = [{"id": f"r{i}", "image": str(p), "question": "the red circle", "completion": "<answer>[1,2,3,4]</answer>",
                 "gt": [[10, 10, 40, 40]], "pred": [[12 + s, 10, 44, 38]], "gt_labels": [""], "pred_labels": [""],
                 "iou": 0.7, "hit": True, "failure": None} for i, p in enumerate(images)]
        (run / "eval" / f"step_{s:06d}.json").write_text(json.dumps({"metrics": {"accuracy": 0.5}, "records": recs}))


def _report(tmp_path, n_images):
    images = []
    for i in range(n_images):
        images.append(tmp_path / f"im{i}.png")
        Image.new("RGB", (112, 112), "white").save(images[-1])
    run = tmp_path / "run"
    run.mkdir()
    _fake_run(run, images)
    return build_report(run)


def test_report_files_and_gallery(tmp_path):
    path = _report(tmp_path, 3)
    names = {p.name for p in path.parent.iterdir()}
    assert {"report.html", "rewards.png", "eval.png", "kl.png", "length.png", "operations.png"} <= names
    assert sum(n.startswith("s0_") for n in names) == 3 and sum(n.startswith("s5_") for n in names) == 3
    drawn = Image.open(path.parent / next(n for n in names if n.startswith("s5_"))).convert("RGB")
    assert drawn.getpixel((10 * 2, 20 * 2)) == (0, 160, 0)  # the green ground-truth edge, image scaled x2
    # its label ("truth": REC rows have none) written in green inside the box's top-left corner
    corner = [drawn.getpixel((x, y)) for x in range(23, 34) for y in range(23, 35)]
    assert sum(g - r > 60 and g - b > 60 for r, g, b in corner) >= 5  # (anti-aliased: greenish, not exact)
    page = path.read_text()
    assert "Validation at step 0" in page and "Validation at step 5" in page
    assert "rules.png" in names  # scheduled values drawn, and the change listed (and marked on every curve)
    assert "<li>after step 3: reward.schedules.rec_iou_thresh.iou_threshold: 0.5 -&gt; 0.75 from step 4" in page


def test_operational_counters_have_their_own_chart():
    from trainer.report import CURVES
    keys = ["reward/mean", "reward/rec_iou", "reward/std", "reward/queue_depth", "reward/worker_recoveries",
            "rollout/engine_restarts", "staleness/max", "kl"]
    picked = {name: [k for k in keys if pick(k)] for name, _, pick in CURVES}
    assert picked["rewards"] == ["reward/mean", "reward/rec_iou"]
    assert picked["operations"] == ["reward/queue_depth", "reward/worker_recoveries", "rollout/engine_restarts",
                                    "staleness/max"]


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_report_renders_in_headless_chromium(tmp_path):
    exe = _chromium()
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is required in CI (.ci/run installs it)")
        pytest.skip("chromium not installed (apt-get install chromium)")
    path = _report(tmp_path, 2)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    dom = subprocess.run([exe, *flags, "--dump-dom", f"file://{path}"], capture_output=True, text=True, timeout=120).stdout
    n_imgs = dom.count("<img ")
    assert n_imgs >= 9 and f"images rendered: {n_imgs} of {n_imgs}" in dom
    shot = tmp_path / "shot.png"
    subprocess.run([exe, *flags, f"--screenshot={shot}", "--window-size=1200,1600", f"file://{path}"],
                   capture_output=True, timeout=120)
    img = Image.open(shot).convert("RGB")
    assert len(img.resize((64, 64)).getcolors(maxcolors=4096) or []) > 10  # not a blank page
