"""Check that convolab's imports run one way: no cycle among the modules of ``src/convolab``.

Reads every module's imports of convolab modules with `ast` (nothing is imported) and
builds two graphs: the imports at module level, and all imports (also those inside functions,
which run later; imports under ``if TYPE_CHECKING:`` never run and are left out). Reports

- cycles among module-level imports (Python would fail or see half-initialised modules);
- function-level imports that close a cycle with the others (a lazy import dodging a cycle),
  as the chain of modules;

and exits 1 if there is either. A package's ``__init__`` counts as importing its submodules
only where it does so itself.

    python tools/import_layers.py [--verbose]
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def resolve(mod: str, is_pkg: bool, level: int, name: str | None) -> str:
    """The absolute module of a (possibly relative) import."""
    if level == 0:
        return name or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def imports(path: Path, modules: set[str]) -> list[tuple[str, bool, int]]:
    """(imported convolab module, at module level, line) for each import in ``path``."""
    mod = module_name(path)
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text())
    top, typing_only = set(), set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(sub) for sub in ast.walk(node))  # never runs: annotations
            continue
        for sub in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
            top.add(id(sub))
    out = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = resolve(mod, is_pkg, node.level, node.module)
            for a in node.names:
                full = f"{base}.{a.name}"
                targets.append(full if full in modules else base)
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != mod and t.startswith("convolab"):
                out.append((t, id(node) in top, node.lineno))
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def path_between(graph, a, b):
    """A chain of imports from ``a`` to ``b`` (breadth first), or None."""
    prev, todo = {a: None}, [a]
    while todo:
        v = todo.pop(0)
        if v == b:
            chain = []
            while v is not None:
                chain.append(v)
                v = prev[v]
            return chain[::-1]
        for w in sorted(graph.get(v, ())):
            if w not in prev:
                prev[w] = v
                todo.append(w)
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--verbose", action="store_true", help="list every lazy import too")
    a = ap.parse_args()
    files = sorted(ROOT.joinpath("convolab").rglob("*.py"))
    modules = {module_name(f) for f in files}
    top: dict[str, set[str]] = {m: set() for m in modules}
    lazy: list[tuple[str, str, int]] = []
    for f in files:
        m = module_name(f)
        for t, at_top, line in imports(f, modules):
            if at_top:
                top[m].add(t)
            else:
                lazy.append((m, t, line))
    bad = 0
    for comp in cycles(top):
        print("cycle among module-level imports:", " <-> ".join(comp))
        bad += 1
    for m, t, line in lazy:
        back = path_between(top, t, m)
        if back:
            print(f"lazy import closing a cycle: {m}:{line} imports {t}, which imports "
                  f"{' -> '.join(back[1:])}")
            bad += 1
        elif a.verbose:
            print(f"lazy import (no cycle): {m}:{line} -> {t}")
    n_lazy = len(lazy)
    print(f"{len(modules)} modules, {sum(map(len, top.values()))} module-level imports, "
          f"{n_lazy} function-level imports; {bad} problem(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
