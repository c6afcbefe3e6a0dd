"""The layout the README's architecture section describes: no import circle, no arrow upward.

Layers, top to bottom: cli -> runnables (experiments, evaluations, benchmarks) -> tooling (train, eval)
(and plan) -> models, data -> core (registry, runtime, config, track, results, stats, hardware, cache)
-> kernels, files, errors. A module may import its own layer or lower ones; no two modules import each other
(imports inside functions count too)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"repro": ROOT / "repro", "repro.experiments": ROOT / "experiments", "repro.kernels": ROOT / "kernels"}
LAYERS = [  # (module prefix, layer); the longest matching prefix wins
    ("repro.kernels", 0),
    ("repro.errors", 0),
    ("repro.files", 0),
    ("repro", 1),  # the core modules at the top of the package
    ("repro.models", 2),
    ("repro.data", 2),
    ("repro.train", 3),
    ("repro.eval", 3),
    ("repro.plan", 3),  # costs a runnable's models and stages: beside the training tooling
    ("repro.experiments", 4),
    ("repro.evaluations", 4),
    ("repro.bench", 4),
    ("repro.cli", 5),
]


def _modules() -> dict[str, Path]:
    mods = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if package == "repro" and parts and parts[0] in ("experiments", "kernels"):
                continue
            mods[".".join([package, *parts])] = path
    return mods


def _edges(mods: dict[str, Path]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = name.split(".")[: len(name.split(".")) - (0 if is_pkg else 1) - (node.level - 1)]
                    base = ".".join([*parts, *([node.module] if node.module else [])])
                targets = [base, *(f"{base}.{a.name}" for a in node.names)]
            edges[name] |= {t for t in targets if t in mods and t != name}
    return edges


def _layer(module: str) -> int:
    best = max((p for p, _ in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return dict(LAYERS)[best]


def test_no_module_imports_one_above_its_layer():
    edges = _edges(_modules())
    upward = [f"{a} -> {b}" for a, bs in edges.items() for b in bs if _layer(b) > _layer(a)]
    assert not upward, upward


def test_no_import_circle():
    edges = _edges(_modules())
    index, low, stack, on, circles = {}, {}, [], set(), []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    assert not circles, circles
