"""A Ray Jobs driver loses its working directory from the import path at ray.init (Ray 2.60), so
the driver imports the whole project first; a module left out fails only under Ray Jobs."""
import json
import pathlib
import subprocess
import sys

import pytest

from tools.layers import LAYERS

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.e2e  # a fresh process importing the whole stack, vLLM and DeepSpeed included (~15 s)
def test_every_project_module_is_imported_before_ray_init():
    code = ("import json, sys; from trainer.cluster import import_project; names = import_project(); "
            "print(json.dumps({'names': names, 'loaded': sorted(n for n in names if n in sys.modules)}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    on_disk = set()
    packages = [p for layer in LAYERS[:-2] for p in layer]  # every layer below the driver and the tools
    for pkg in packages:
        files = [REPO / f"{pkg}.py"] if (REPO / f"{pkg}.py").is_file() else (REPO / pkg).rglob("*.py")
        for f in files:
            rel = f.relative_to(REPO).with_suffix("")
            on_disk.add(".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts))
    assert on_disk - set(out["names"]) == set()  # nothing on disk is left to a lazy import after ray.init
    assert {"conf.hardware", "samples", "weights.wire"} <= on_disk and out["loaded"] == sorted(out["names"])


def test_actors_get_the_node_host_only_in_a_private_cluster_and_the_project_on_their_path(tmp_path):
    import conf
    from trainer.cluster import actor_env
    local = actor_env(conf.resolve(conf.load(["cluster.node_host=127.0.0.2", "rollout.kv_cache_gb=3"]), tmp_path))
    assert local["VR1_NODE_HOST"] == "127.0.0.2" and local["VLLM_CPU_KVCACHE_SPACE"] == "3"
    assert local["PYTHONPATH"].split(":")[0] == str(REPO) and local["WANDB_MODE"] == "offline"
    joined = actor_env(conf.resolve(conf.load(["cluster.address=auto"]), tmp_path))
    assert "VR1_NODE_HOST" not in joined  # a joined cluster's actors listen on their node's own address
    assert all(v for v in joined.values())  # nothing empty is handed on
