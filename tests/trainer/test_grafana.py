"""The Grafana dashboard: the committed JSON is what trainer.grafana builds, and its queries name
the metrics Ray exports (which metric keys a run logs is checked against a real run in
tests/actors/test_runtime.py)."""
import json
import re

from trainer import grafana
from trainer.monitor import metric_name


def test_the_committed_dashboard_is_the_generated_one():
    committed = json.loads(grafana.OUT.read_text())
    assert committed == grafana.dashboard(), "docker/grafana is stale: run python -m trainer.grafana"
    assert len(committed["panels"]) == len(grafana.PANELS) and len({p["id"] for p in committed["panels"]}) == len(grafana.PANELS)
    assert [v["name"] for v in committed["templating"]["list"]] == ["datasource", "SessionName"]


def test_each_query_is_a_ray_gauge_of_a_panel_key_in_one_session():
    for panel, (_, _, keys) in zip(grafana.dashboard()["panels"], grafana.PANELS):
        for target, key in zip(panel["targets"], keys, strict=True):
            e = target["expr"]
            assert e.endswith('SessionName=~"$SessionName"}')
            if key.endswith("/*"):
                assert e.startswith('{__name__=~"ray_vlmr1_reward_.+"') and "ray_vlmr1_reward_queue_depth" in e
            else:
                assert re.fullmatch(r"ray_vlmr1_[a-zA-Z0-9_]+\{.*\}", e) and e.split("{")[0] == "ray_" + metric_name(key)


def test_unexported_names_what_a_run_does_not_log():
    every = {k for _, _, keys in grafana.PANELS for k in keys if not k.endswith("/*")} | {"reward/rec_iou"}
    assert grafana.unexported(every) == []
    assert grafana.unexported(every - {"kl"}) == ["kl"]
    assert grafana.unexported(every - {"reward/rec_iou"}) == ["reward/*"]  # mean/std/queue do not count as rewards
