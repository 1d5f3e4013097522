"""A Ray Jobs driver loses its working directory from the import path at ray.init (Ray 2.60), so
the driver imports the whole project first; a module left out fails only under Ray Jobs."""
import json
import pathlib
import subprocess
import sys

from tools.layers import LAYERS

REPO = pathlib.Path(__file__).resolve().parents[2]


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
