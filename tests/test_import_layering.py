"""The package's layering: no two modules import each other, directly or through others, counting the
imports inside functions too (a function-local import hides a circle from Python, not from a reader).
kernels/ is installed as motionstreamer.kernels and counted as such. The cycle search is networkx's."""
import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parent.parent


def modules() -> dict[str, Path]:
    out = {}
    for f in sorted((ROOT / "motionstreamer").rglob("*.py")):
        rel = f.relative_to(ROOT).with_suffix("").parts
        out[".".join(rel[:-1] if rel[-1] == "__init__" else rel)] = f
    for f in sorted((ROOT / "kernels").glob("*.py")):
        out["motionstreamer.kernels" + ("" if f.stem == "__init__" else f".{f.stem}")] = f
    return out


def import_graph() -> nx.DiGraph:
    mods = modules()
    g = nx.DiGraph()
    g.add_nodes_from(mods)
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in mods:          # the deepest module the name is in
                    t = t.rpartition(".")[0]
                if t and t != name:
                    g.add_edge(name, t)
    return g


def test_no_import_circle():
    g = import_graph()
    assert g.number_of_nodes() > 80 and g.number_of_edges() > 200        # it read the package
    circles = [sorted(c) for c in nx.strongly_connected_components(g) if len(c) > 1]
    assert circles == [], f"modules that import each other: {circles}"
