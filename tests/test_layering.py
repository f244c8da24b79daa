"""The package layering (``docs/architecture.md``), read from every module's imports with ``ast``.

Imports inside functions count: they are dependencies all the same. A package is a top-level
name under ``edgeasr`` (``edgeasr.runtime``, ``edgeasr.cli``, ...).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "edgeasr"

# Known package edges that close a loop, each with the reason it is not removed here. The loop
# test fails on any other loop, and on an entry here that no longer exists (so the list shrinks).
KNOWN_LOOP_EDGES = {
    ("data", "training"): "data/datamodule.py imports training.distill.collate_targets (data -> training -> "
                          "metrics -> data); collate_targets belongs in data/",
}


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    is_pkg = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_pkg else parts), is_pkg


def imports() -> dict[str, set[str]]:
    """Module -> every ``edgeasr...`` module name it imports (``from a import b`` adds ``a`` and ``a.b``)."""
    out: dict[str, set[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        mod, is_pkg = _module_name(path)
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                found.add(target)
                found.update(f"{target}.{a.name}" for a in node.names)
        out[mod] = {n for n in found if n == "edgeasr" or n.startswith("edgeasr.")}
    return out


def package(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for mod, names in imports().items():
        for n in names:
            if package(n) != package(mod) and package(n) != "edgeasr":
                graph[package(mod)].add(package(n))
    return graph


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return False


def _violations(prefix: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(f"{mod} imports {n}" for mod, names in imports().items()
                  if mod == prefix or mod.startswith(prefix + ".")
                  for n in names if any(n == f or n.startswith(f + ".") for f in forbidden))


def test_the_import_reader_sees_imports_inside_functions():
    found = imports()
    assert "edgeasr.runtime.ops" in found["edgeasr.runtime.transducer"]  # a relative import at the top
    assert "edgeasr.stages.prologue" in found["edgeasr.stages.prepare"]  # inside run()


def test_no_import_loop_between_packages():
    graph = package_graph()
    for edge, why in KNOWN_LOOP_EDGES.items():
        assert edge[1] in graph.get(edge[0], ()), f"{edge} is gone ({why}): drop it from KNOWN_LOOP_EDGES"
    cut = {a: {b for b in bs if (a, b) not in KNOWN_LOOP_EDGES} for a, bs in graph.items()}
    loops = sorted(f"{a} -> {b} -> ... -> {a}" for a, bs in cut.items() for b in bs if _reaches(cut, b, a))
    assert not loops, loops


def test_the_export_format_imports_neither_the_runtime_nor_the_emulator():
    assert not _violations("edgeasr.export", ("edgeasr.runtime", "edgeasr.emulator"))


def test_the_runtime_imports_no_training_code():
    assert not _violations("edgeasr.runtime", ("edgeasr.compression", "edgeasr.training"))


def test_the_lattice_builds_on_the_decoders_alone():
    """Lattices are made on the device from any model with the decoding interface: no training side,
    no model classes, no runtime (it serves the PyTorch student and the runtime alike)."""
    banned = ("edgeasr.compression", "edgeasr.training", "edgeasr.stages", "edgeasr.models", "edgeasr.data",
              "edgeasr.runtime", "edgeasr.tracking")
    assert not _violations("edgeasr.lattice", banned)


def test_the_end_pointers_build_on_the_decoders_alone():
    """End-pointing runs on the device beside the lattice: any model with the decoding (and a
    streaming encoder) interface; no training side, model classes, runtime, data or tracking."""
    banned = ("edgeasr.compression", "edgeasr.training", "edgeasr.stages", "edgeasr.models", "edgeasr.data",
              "edgeasr.runtime", "edgeasr.tracking", "edgeasr.lm")
    assert not _violations("edgeasr.endpoint", banned)


def test_the_cloud_lm_imports_no_training_runtime_or_stage_code():
    banned = ("edgeasr.training", "edgeasr.runtime", "edgeasr.stages", "edgeasr.compression", "edgeasr.tracking")
    assert not _violations("edgeasr.lm", banned)


def test_the_compression_spec_imports_no_component_that_reads_it():
    banned = ("edgeasr.runtime", "edgeasr.emulator", "edgeasr.compression", "edgeasr.training", "edgeasr.export")
    assert not _violations("edgeasr.quantspec", banned)


def test_the_decoders_and_their_context_biasing_are_device_side():
    """Search and shallow-fusion biasing run on the device for the PyTorch model and the runtime
    alike: they import no model classes, runtime, data, training, stages or tracking."""
    banned = ("edgeasr.compression", "edgeasr.training", "edgeasr.stages", "edgeasr.models", "edgeasr.data",
              "edgeasr.runtime", "edgeasr.tracking", "edgeasr.lm", "edgeasr.lattice", "edgeasr.endpoint")
    assert not _violations("edgeasr.decoding", banned)
