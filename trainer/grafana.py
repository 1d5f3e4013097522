"""The Grafana dashboard of a run's own metrics (``docker/grafana/vlmr1_dashboard.json``).

    python -m trainer.grafana            # rewrite the JSON from PANELS

Every panel plots Ray gauges that ``trainer.monitor.Monitor`` exports for a metric key (the key
``reward/mean`` becomes ``ray_vlmr1_reward_mean`` in Prometheus). Panels take either exact keys
or one prefix (``reward/``: every reward, whatever the task's reward set). The dashboard uses a
``datasource`` variable (Ray's provisioned Prometheus by default) and a ``SessionName`` variable
so that one Ray session's run is shown at a time.
"""
from __future__ import annotations

import json
import pathlib

from trainer.monitor import metric_name

OUT = pathlib.Path(__file__).resolve().parents[1] / "docker" / "grafana" / "vlmr1_dashboard.json"
PREFIX = "ray_"  # what Ray puts before a custom metric's name in Prometheus
UID = "vlmr1-run"

# (title, unit, metric keys; a key ending in "/*" is every key under that prefix)
PANELS = [
    ("Rewards (mean, std and each reward)", "none", ["reward/mean", "reward/std", "reward/*"]),
    ("Validation", "percentunit", ["eval/accuracy", "eval/mean_iou", "eval/mAP", "eval/AP50"]),
    ("KL to the reference", "none", ["kl"]),
    ("Clipped fractions", "percentunit", ["clip_high_frac", "clip_low_frac", "offpolicy/dual_clip_frac",
                                          "offpolicy/is_guarded_frac"]),
    ("Seconds per step, by phase", "s", ["time/rollout_s", "time/reward_s", "time/train_s", "time/sync_s",
                                         "time/step_s"]),
    ("Rollout tokens per second", "none", ["rollout/tokens_per_s"]),
    ("Weight sync bytes per update", "bytes", ["sync/bytes"]),
    ("Completion length and truncation", "none", ["completion_len/mean", "completion_len/max", "truncated_frac"]),
    ("Boxes per answer (predicted vs ground truth)", "none", ["boxes/pred_per_answer", "boxes/gt_per_answer"]),
    ("Loss, gradient norm, entropy", "none", ["loss", "grad_norm", "entropy"]),
    ("Engine restarts, reward-worker recoveries, skipped updates", "none",
     ["rollout/engine_restarts", "reward/worker_recoveries", "skipped_updates"]),
    ("Reward queue depth", "none", ["reward/queue_depth"]),
    ("Staleness (policy versions behind)", "none", ["staleness/max", "staleness/mean"]),
    ("Importance weights and engine/learner mismatch", "none", ["offpolicy/is_mean", "offpolicy/is_max",
                                                                  "offpolicy/mismatch_kl", "engine_logp_abs_diff"]),
    ("Learning rate", "none", ["lr"]),
]
# operational series shown apart from the rewards (as in the HTML report)
NOT_REWARDS = ("reward/mean", "reward/std", "reward/queue_depth", "reward/worker_recoveries")


def expr(key: str) -> str:
    """PromQL of one panel key, restricted to the chosen Ray session."""
    session = 'SessionName=~"$SessionName"'
    if key.endswith("/*"):
        prefix = PREFIX + metric_name(key[:-1])
        skip = "|".join(PREFIX + metric_name(k) for k in NOT_REWARDS if k.startswith(key[:-1]))
        return f'{{__name__=~"{prefix}.+", __name__!~"{skip}", {session}}}' if skip else \
            f'{{__name__=~"{prefix}.+", {session}}}'
    return f"{PREFIX}{metric_name(key)}{{{session}}}"


def _panel(i: int, title: str, unit: str, keys: list[str]) -> dict:
    targets = [{"refId": chr(ord("A") + j), "expr": expr(k),
                "legendFormat": "{{__name__}}" if k.endswith("/*") else k, "datasource": {"uid": "${datasource}"}}
               for j, k in enumerate(keys)]
    return {"id": i + 1, "type": "timeseries", "title": title, "datasource": {"uid": "${datasource}"},
            "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
            "targets": targets}


def dashboard() -> dict:
    return {
        "uid": UID, "title": "VLM-R1 on Ray: training run", "tags": ["vlm-r1-ray"], "editable": True,
        "schemaVersion": 39, "version": 1, "refresh": "10s", "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source",
             "current": {"selected": False, "text": "Prometheus", "value": "Prometheus"}},
            {"name": "SessionName", "type": "query", "label": "Ray session", "datasource": {"uid": "${datasource}"},
             "query": {"query": f"label_values({PREFIX}{metric_name('step')}, SessionName)", "refId": "S"},
             "definition": f"label_values({PREFIX}{metric_name('step')}, SessionName)",
             "refresh": 2, "includeAll": True, "multi": False, "sort": 2},
        ]},
        "panels": [_panel(i, *p) for i, p in enumerate(PANELS)],
    }


def unexported(keys) -> list[str]:
    """Panel keys that no key in ``keys`` (metric keys a run logged) provides."""
    keys = set(keys)
    out = []
    for _, _, wanted in PANELS:
        for k in wanted:
            if k.endswith("/*"):
                if not any(x.startswith(k[:-1]) and x not in NOT_REWARDS for x in keys):
                    out.append(k)
            elif k not in keys:
                out.append(k)
    return out


def main() -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(dashboard(), indent=1) + "\n")
    print(f"{OUT} ({len(PANELS)} panels)")


if __name__ == "__main__":
    main()
