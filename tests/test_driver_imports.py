"""A Ray Jobs driver loses its working directory from the import path at ray.init (Ray 2.60), so
the orchestrator imports the whole project first; a module left out fails only under Ray Jobs."""
import json
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_every_project_module_is_imported_before_ray_init():
    code = ("import json, sys, orchestrator; names = orchestrator._import_driver_modules(); "
            "print(json.dumps({'names': names, 'loaded': sorted(n for n in names if n in sys.modules)}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    on_disk = set()
    for pkg in ("actors", "conf", "data", "learner", "models", "rewards", "trainer"):
        for f in (REPO / pkg).rglob("*.py"):
            rel = f.relative_to(REPO).with_suffix("")
            on_disk.add(".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts))
    assert on_disk - set(out["names"]) == set()  # nothing on disk is left to a lazy import after ray.init
    assert "conf.hardware" in on_disk and out["loaded"] == sorted(out["names"])
