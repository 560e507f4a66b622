"""No import cycle among the project's modules and no upward import between molmini's layers, function-level
imports included: each concept's module depends only on the ones below it (record -> stream -> formatter ->
processor -> model -> loop; config < data < hub < model < auto < train < serve < cli; and
data_pipelines -> molmini <- eval). Read from the source with `ast`, so an import hidden in a function counts."""
from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import ROOT

PACKAGES = ("molmini", "eval", "data_pipelines")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `name` imports anywhere in its file (`from pkg import sub` counts `pkg.sub`
    when that is a module, else `pkg`)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in modules and t != name}
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_checker_finds_a_cycle_hidden_in_a_function(tmp_path):
    (tmp_path / "a.py").write_text("from . import b\n")
    (tmp_path / "b.py").write_text("def late():\n    from .a import thing\n    return thing\n")
    (tmp_path / "c.py").write_text("import pkg.a\n")
    modules = {f"pkg.{n}": tmp_path / f"{n}.py" for n in "abc"}
    graph = {name: imported(name, path, modules) for name, path in modules.items()}
    assert graph == {"pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}, "pkg.c": {"pkg.a"}}
    assert cycles(graph) == [["pkg.a", "pkg.b"]]


def test_no_import_cycle_in_the_project():
    modules = project_modules()
    graph = {name: imported(name, path, modules) for name, path in modules.items()}
    assert graph["eval.heldout"] >= {"eval.runner", "eval.models"}  # the parser sees relative imports
    assert cycles(graph) == []


# The modules one training sample passes through, in the order it meets them (the DESIGN's data path).
SAMPLE_PATH = ["molmini.data.records", "molmini.data.reader", "molmini.data.stream", "molmini.data.formatter",
               "molmini.data.crops", "molmini.data.processor", "molmini.data.packing", "molmini.data.loader",
               "molmini.model.loss", "molmini.model.vlm", "molmini.train.loop"]


def test_the_sample_path_reads_in_one_pass():
    """Each module on the path imports only modules met before it on the path, so reading them in this
    order never sends the reader back to a file already read (nor ahead to one not yet read)."""
    modules = project_modules()
    ahead = {name: sorted(other for other in imported(name, modules[name], modules)
                          if other in SAMPLE_PATH and SAMPLE_PATH.index(other) > SAMPLE_PATH.index(name))
             for name in SAMPLE_PATH}
    assert {name: later for name, later in ahead.items() if later} == {}


# molmini's layers, bottom to top: a module imports only from its own layer and the ones below it. The
# top-level errors and progress are the base; cli is the top; molmini.hf_auto is auto's first name (an alias
# published checkpoints import), and the package's own __init__ loads its exports lazily.
LAYERS = [("molmini.errors", "molmini.progress"), ("molmini.config",), ("molmini.data",), ("molmini.hub",),
          ("molmini.model",), ("molmini.auto", "molmini.hf_auto"), ("molmini.train",), ("molmini.serve",),
          ("molmini.cli", "molmini")]


def layer_of(module: str) -> int:
    """The layer of a molmini module (its longest matching prefix: molmini.data.stream is in molmini.data)."""
    matches = [(len(prefix), i) for i, layer in enumerate(LAYERS) for prefix in layer
               if module == prefix or module.startswith(prefix + ".")]
    return max(matches)[1]


def upward_imports(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    return {name: sorted(t for t in targets if t.startswith("molmini") and layer_of(t) > layer_of(name))
            for name, targets in graph.items() if name.startswith("molmini") and name != "molmini"}


def test_the_layer_checker_finds_an_upward_import():
    graph = {"molmini.data.stream": {"molmini.model.vlm", "molmini.data.records"},
             "molmini.train.loop": {"molmini.model.vlm", "molmini.data.loader"}, "molmini.model.vlm": set()}
    assert {k: v for k, v in upward_imports(graph).items() if v} == {"molmini.data.stream": ["molmini.model.vlm"]}
    assert layer_of("molmini.hf_auto") == layer_of("molmini.auto.classes") > layer_of("molmini.model.vlm")


def test_no_molmini_module_imports_a_layer_above_its_own():
    """config < data < hub < model < auto < train < serve < cli, function-level imports included; and the
    data layer (what the data commands import) never reaches the model, training or serving code."""
    modules = project_modules()
    graph = {name: imported(name, path, modules) for name, path in modules.items()}
    assert {name for name in modules if name.startswith("molmini.")} >= {
        "molmini.config.loading", "molmini.data.records", "molmini.hub.checkpoint_files", "molmini.model.vlm",
        "molmini.model.interface", "molmini.auto.classes", "molmini.train.loop", "molmini.serve.server"}
    assert {name: up for name, up in upward_imports(graph).items() if up} == {}
    # the offline jobs and evaluation sit beside molmini: nothing in it imports them
    assert {name: sorted(t for t in targets if not t.startswith("molmini"))
            for name, targets in graph.items() if name.startswith("molmini") and
            any(not t.startswith("molmini") for t in targets)} == {}
    # data_pipelines imports only the record schema (and the data layer below the model) from molmini
    assert {t for name, targets in graph.items() if name.startswith("data_pipelines")
            for t in targets if t.startswith("molmini")} <= {"molmini.data.records", "molmini.data.reader",
                                                              "molmini.data.layouts", "molmini.data.images",
                                                              "molmini.errors", "molmini.progress", "molmini"}
