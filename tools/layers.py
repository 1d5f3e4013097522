"""The project's import layers, written down once, and a check that every import points down.

    python -m tools.layers              # this checkout: arrows against the order, import circles
    python -m tools.layers --repo DIR   # another checkout (to compare before and after a change)

From the bottom: each layer may import the layers below it and itself, never one above; packages
sharing a layer (``learner`` and ``actors``) may not import each other, so the two ends of the
weight wire meet only in ``weights``. Every import counts, also those inside functions (a lazy
import hides an arrow, it does not remove it). ``tests/tools/test_layers.py`` keeps this true.
"""
from __future__ import annotations

import argparse
import ast
import pathlib
import sys

LAYERS: list[tuple[str, ...]] = [
    ("samples",),              # the types that travel between the roles (stdlib only)
    ("rewards",),              # pure reward rules and their registry
    ("models",),               # model families: what differs per family
    ("data",),                 # loaders, prompts, synthetic scenes, tiny model builds
    ("conf",),                 # composition and validation against the registries below; what auto means
    ("weights",),              # the weight wire: both ends, and where they meet
    ("learner", "actors"),     # the DeepSpeed learner; rollout engines, reward workers, the group helper
    ("trainer",),              # roles, cluster, batch source, checkpoints, evaluation, monitoring, report
    ("orchestrator",),         # the loop
    ("bench", "tools", "tests"),  # measure, maintain, check: may import anything
]
LEVEL = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}
TOP = len(LAYERS) - 1


def modules(repo: pathlib.Path) -> dict[str, pathlib.Path]:
    """Dotted module name -> file, for every project module (packages of LEVEL and top-level files)."""
    out = {}
    for pkg in LEVEL:
        single = repo / f"{pkg}.py"
        if single.is_file():
            out[pkg] = single
        for path in sorted((repo / pkg).rglob("*.py")) if (repo / pkg).is_dir() else []:
            parts = list(path.relative_to(repo).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imports(name: str, path: pathlib.Path, known: dict) -> list[tuple[str, int]]:
    """(imported project module, line) for every import in the file, at any depth."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            # "from pkg import mod" names a submodule where one exists, else a name of pkg
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # "import a.b.c" of a module inside a project package
                t = t.rpartition(".")[0]
            if t and t != name:
                found.append((t, node.lineno))
    return found


def level(module: str) -> int:
    return LEVEL[module.split(".")[0]]


def check(repo: pathlib.Path) -> tuple[list[str], list[list[str]]]:
    """(arrows against the order as 'file:line: a -> b (why)', import circles as module lists)."""
    known = modules(repo)
    graph, wrong = {}, []
    for name, path in known.items():
        graph[name] = sorted({t for t, _ in imports(name, path, known)})
        for target, line in imports(name, path, known):
            a, b = name.split(".")[0], target.split(".")[0]
            if a == b or level(name) == TOP:
                continue
            if level(target) > level(name):
                wrong.append(f"{path.relative_to(repo)}:{line}: {name} -> {target} (imports a layer above)")
            elif level(target) == level(name):
                wrong.append(f"{path.relative_to(repo)}:{line}: {name} -> {target} ({a} and {b} share a layer)")
    return sorted(set(wrong)), circles(graph)


def circles(graph: dict[str, list[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    return sorted(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=pathlib.Path, default=pathlib.Path(__file__).resolve().parents[1])
    args = ap.parse_args(argv)
    wrong, loops = check(args.repo)
    for w in wrong:
        print(w)
    for group in loops:
        print("circle:", " <-> ".join(group))
    print(f"{len(wrong)} arrows against the layer order, {len(loops)} import circles ({args.repo})")
    return 1 if wrong or loops else 0


if __name__ == "__main__":
    raise SystemExit(main())
