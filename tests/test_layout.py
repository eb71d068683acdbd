"""The package layout holds: one namespace, imports only downward, no circles, Ray only in live/runtime/ray/,
and pipeline/live/ in rooms that import only downward."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
STAGES = ("devices", "encoders", "scheduler", "pipeline")
MAY_IMPORT = {  # the stage packages each stage may import (DESIGN.md)
    "devices": {"devices"},
    "encoders": {"encoders"},
    "scheduler": {"scheduler", "devices"},
    "pipeline": set(STAGES),
}
GENERIC = set(STAGES)
LIVE = "exitflow.pipeline.live"
RAY_ROOM = f"{LIVE}.runtime.ray"
# the rooms of pipeline/live/ and the rooms each may import (DESIGN.md): core <- recording <- sources
# <- runtime <- runtime.ray; views take core and recording; run.py sits on top of them all
LIVE_ROOMS = ("core", "recording", "sources", "runtime", "runtime.ray", "views", "run")
LIVE_MAY_IMPORT = {
    "core": {"core"},
    "recording": {"core", "recording"},
    "sources": {"core", "recording", "sources"},
    "runtime": {"core", "recording", "sources", "runtime"},
    "runtime.ray": {"core", "recording", "sources", "runtime", "runtime.ray"},
    "views": {"core", "recording", "views"},
    "run": set(LIVE_ROOMS),
}
MAX_LIVE_FILE_LINES = 400


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return "exitflow." + ".".join(parts) if parts[0] in STAGES else ".".join(parts)


def project_files() -> list[Path]:
    files = [p for stage in STAGES for p in (REPO / stage).rglob("*.py")]
    return sorted(files + list((REPO / "exitflow").rglob("*.py")))


def imports_of(path: Path) -> list[tuple[str, int]]:
    """Every module ``path`` imports (at any depth, including inside functions), with its line."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
            found += [(f"{node.module}.{a.name}", node.lineno) for a in node.names]
    return found


def graph() -> dict[str, set[str]]:
    """Module -> project modules it imports (names resolved to the modules that exist)."""
    modules = {module_name(p): p for p in project_files()}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        for name, _ in imports_of(path):
            target = name
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != mod and target.startswith("exitflow."):
                # importing a package runs its __init__, which is a module of its own
                edges[mod].add(target)
    return edges


def test_no_generic_top_level_imports() -> None:
    bad = []
    for path in project_files() + sorted((REPO / "tests").rglob("*.py")) + sorted((REPO / "benchmarks").rglob("*.py")):
        for name, line in imports_of(path):
            if name.split(".")[0] in GENERIC:
                bad.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    assert not bad, "\n".join(bad)


def test_stages_import_only_downward_and_ray_only_in_live() -> None:
    bad = []
    for path in project_files():
        mod = module_name(path)
        stage = mod.split(".")[1] if mod.startswith("exitflow.") and mod.count(".") >= 1 else None
        for name, line in imports_of(path):
            top = name.split(".")
            if top[0] == "ray" and not mod.startswith(RAY_ROOM):
                bad.append(f"{mod}:{line} imports ray outside pipeline/live/runtime/ray")
            if top[0] == "exitflow" and len(top) > 1 and top[1] in STAGES and stage in MAY_IMPORT:
                if top[1] not in MAY_IMPORT[stage]:
                    bad.append(f"{mod}:{line} imports {name} ({stage} may import {sorted(MAY_IMPORT[stage])})")
    assert not bad, "\n".join(bad)


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle() -> None:
    edges = graph()
    # a package's __init__ importing its own submodules is not a circle with them
    for mod in edges:
        edges[mod] = {t for t in edges[mod] if not mod.startswith(t + ".")}
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_package_documents_its_place(stage: str) -> None:
    doc = ast.get_docstring(ast.parse((REPO / stage / "__init__.py").read_text(encoding="utf-8")))
    assert doc, f"{stage}/__init__.py needs a docstring saying its stage in the data flow"


def live_room(module: str) -> str | None:
    """``exitflow.pipeline.live.runtime.ray.service`` -> ``runtime.ray``; None outside the rooms."""
    if not module.startswith(LIVE + "."):
        return None
    rest = module[len(LIVE) + 1:].split(".")
    if rest[0] == "runtime" and len(rest) > 1 and rest[1] == "ray":
        return "runtime.ray"
    return rest[0] if rest[0] in LIVE_ROOMS else None


def live_files() -> list[Path]:
    return sorted((REPO / "pipeline" / "live").rglob("*.py"))


def test_live_rooms_import_only_downward() -> None:
    assert {live_room(module_name(p)) for p in live_files()} - {None} == set(LIVE_ROOMS)
    bad = []
    for path in live_files():
        mod = module_name(path)
        room = live_room(mod)
        if room is None:  # live/__init__.py: a docstring, nothing imported
            assert not imports_of(path), f"{mod} imports something; it should only describe the rooms"
            continue
        for name, line in imports_of(path):
            target = live_room(name)
            if name.startswith(LIVE) and target is None and name != LIVE:
                bad.append(f"{mod}:{line} imports {name}, outside the rooms of pipeline/live")
            elif target is not None and target not in LIVE_MAY_IMPORT[room]:
                bad.append(f"{mod}:{line} imports {name} ({room} may import {sorted(LIVE_MAY_IMPORT[room])})")
    assert not bad, "\n".join(bad)


def test_live_rooms_document_their_stage_and_exports() -> None:
    for init in sorted((REPO / "pipeline" / "live").rglob("__init__.py")):
        tree = ast.parse(init.read_text(encoding="utf-8"))
        assert ast.get_docstring(tree), f"{init.relative_to(REPO)} needs a docstring saying its stage"
        names = [t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
                 if isinstance(t, ast.Name)]
        assert "__all__" in names, f"{init.relative_to(REPO)} needs an __all__"


def test_no_live_file_over_400_lines() -> None:
    long = {str(p.relative_to(REPO)): n for p in live_files()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LIVE_FILE_LINES}
    assert not long, f"split these by concept (at most {MAX_LIVE_FILE_LINES} lines): {long}"


@pytest.mark.parametrize("module", [f"{LIVE}.runtime.local", f"{LIVE}.runtime.driver", f"{LIVE}.run"])
def test_the_local_runtime_loads_no_ray(module: str) -> None:
    code = f"import sys, {module}; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False", f"importing {module} loaded ray"
