"""Imports point down the layers of ``tools/layers.py`` and never run in a circle."""
import pathlib

from tools.layers import LAYERS, check, circles, imports, modules

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_every_import_points_down_and_none_runs_in_a_circle():
    wrong, loops = check(REPO)
    assert wrong == [] and loops == []


def test_every_project_package_has_a_layer():
    on_disk = {p.name for p in REPO.iterdir() if (p / "__init__.py").is_file()} | {"orchestrator", "samples"}
    assert on_disk <= {pkg for layer in LAYERS for pkg in layer}


def test_the_check_sees_lazy_relative_and_upward_imports(tmp_path):
    (tmp_path / "samples.py").write_text("def f():\n    import trainer.pipeline  # lazy, and upward\n")
    (tmp_path / "trainer").mkdir()
    (tmp_path / "trainer" / "__init__.py").write_text("")
    (tmp_path / "trainer" / "pipeline.py").write_text("from . import sampling\n")
    (tmp_path / "trainer" / "sampling.py").write_text("from .pipeline import x\nimport samples\n")
    (tmp_path / "learner").mkdir()
    (tmp_path / "learner" / "__init__.py").write_text("from actors import group\n")
    (tmp_path / "actors").mkdir()
    (tmp_path / "actors" / "__init__.py").write_text("")
    (tmp_path / "actors" / "group.py").write_text("")
    known = modules(tmp_path)
    assert imports("trainer.sampling", tmp_path / "trainer" / "sampling.py", known) == [
        ("trainer.pipeline", 1), ("samples", 2)]
    wrong, loops = check(tmp_path)
    assert wrong == ["learner/__init__.py:1: learner -> actors.group (learner and actors share a layer)",
                     "samples.py:2: samples -> trainer.pipeline (imports a layer above)"]
    assert loops == [["samples", "trainer.pipeline", "trainer.sampling"]]  # samples -> pipeline -> sampling -> samples
    assert circles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]
