"""The self-contained remote code of a checkpoint: configuration_molmini.py, processing_molmini.py and
modeling_molmini.py, generated at save time from molmini's own source, so that
`AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)` and `pipeline("image-text-to-text",
...)` run where only torch, transformers, safetensors, pillow and numpy are installed, and compute exactly what
molmini computes.

There is one source of truth: each file is the source of a few root objects (the classes auto_map names) and of
everything they use, in dependency order, copied from molmini's modules as they are. A name a copied object
uses is followed to where it is defined: a molmini definition (function, class, constant) is copied too, an
import of another package is repeated, an object an earlier file already defines is imported from it (`from
.configuration_molmini import MolminiConfig`: one class, as transformers requires). Two substitutions make the
code standalone: MolminiModel (open_clip's tower, training) is replaced by molmini/model/plain_vlm.py's
PlainMolminiModel, which borrows MolminiModel's own computing methods and builds the tower from
molmini/model/plain_vit.py; and writing the remote code (when a processor is saved) copies the files beside it.
A copied object that imports molmini inside a function is an error here, at generation, not a surprise later.
"""
from __future__ import annotations

import ast
import functools
import importlib
import inspect
import re
import sys
import textwrap
import types
from typing import Any

CONFIGURATION, PROCESSING, MODELING = "configuration_molmini.py", "processing_molmini.py", "modeling_molmini.py"
DOCS = {CONFIGURATION: "molmini's config for transformers' AutoConfig (trust_remote_code=True).",
        PROCESSING: "molmini's processor for transformers' AutoProcessor (trust_remote_code=True): images to crops "
                    "and pooling windows,\nconversations to token ids in the model's chat format.",
        MODELING: "molmini's model for transformers' AutoModelForImageTextToText (trust_remote_code=True): the "
                  "vision tower,\nthe connector and the transformers LM they feed."}
MOLMINI_IMPORT = re.compile(r"^\s*(from|import)\s+molmini\b", re.MULTILINE)


class StandaloneError(RuntimeError):
    """molmini's source cannot be made self-contained as it stands (a bug in molmini, caught by its tests)."""


# What each file is copied from, and what the copies use instead of two objects of molmini (see the module
# docstring). Named by string: this module reads those modules as source and copies them; it calls none of them,
# so the hub layer does not depend on the layers above it (tests/test_import_cycles.py).
ROOTS = {CONFIGURATION: [("molmini.auto.classes", "MolminiConfig")],
         PROCESSING: [("molmini.auto.processor", "MolminiTransformersProcessor")],
         MODELING: [("molmini.auto.classes", "MolminiConfig"),
                    ("molmini.auto.classes", "MolminiForConditionalGeneration")]}
SUBSTITUTES = [(("molmini.model.vlm", "MolminiModel"), ("molmini.model.plain_vlm", "PlainMolminiModel")),
               (("molmini.hub.checkpoint_files", "write_remote_code"),
                ("molmini.hub.checkpoint_files", "copy_remote_code_beside"))]


def _named(module: str, name: str) -> Any:
    return getattr(importlib.import_module(module), name)


@functools.lru_cache(maxsize=1)
def standalone_files() -> dict[str, str]:
    """{file name: source} of the three remote-code files; the same for every checkpoint with a plain tower
    (the tower is described in config.json), so computed once per process."""
    substitutes = {id(_named(*original)): _named(*copy) for original, copy in SUBSTITUTES}
    roots = ROOTS
    provided: dict[int, tuple[str, str]] = {}
    files = {}
    for name, wanted in roots.items():
        file = SourceFile(substitutes, provided)
        for module, root in wanted:
            file.need(importlib.import_module(module), root)
        text = file.render(DOCS[name], [root for _, root in wanted])
        if MOLMINI_IMPORT.search(text):
            raise StandaloneError(f"{name} would import molmini: {MOLMINI_IMPORT.search(text).group(0)!r}")
        compile(text, name, "exec")
        files[name] = text
        for bound, obj in file.names.items():  # molmini's own classes and functions, for the later files
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__module__.split(".")[0] == "molmini":
                provided.setdefault(id(obj), (name.removesuffix(".py"), bound))
    return files


@functools.lru_cache(maxsize=None)
def _module_tree(module_name: str) -> ast.Module:
    return ast.parse(inspect.getsource(sys.modules[module_name]))


def _binding(module: types.ModuleType, name: str) -> ast.stmt:
    """The top-level statement of `module` that binds `name`."""
    for node in _module_tree(module.__name__).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return node
        if isinstance(node, ast.Assign) and name in _assigned(node):
            return node
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name:
            return node
        if isinstance(node, (ast.Import, ast.ImportFrom)) and name in _bound_by_import(node):
            return node
        if isinstance(node, ast.Try) and any(isinstance(s, (ast.Import, ast.ImportFrom)) and name in
                                             _bound_by_import(s) for s in node.body):
            return node
    raise StandaloneError(f"{module.__name__}.{name} is not bound by a top-level statement molmini can copy")


def _assigned(node: ast.Assign) -> list[str]:
    """The names an assignment binds (`A = ...`, `A, B = ...`)."""
    targets = [e for t in node.targets for e in (t.elts if isinstance(t, ast.Tuple) else [t])]
    return [t.id for t in targets if isinstance(t, ast.Name)]


def _bound_by_import(node: ast.Import | ast.ImportFrom) -> dict[str, ast.alias]:
    return {(a.asname or a.name.split(".")[0]): a for a in node.names}


def _loaded_names(node: ast.AST, skip: set[int] = frozenset()) -> list[str]:
    """The names `node` reads, in order, leaving out annotations (never evaluated: the files start with
    `from __future__ import annotations`) and the nodes in `skip`."""
    names: list[str] = []

    def visit(n: ast.AST) -> None:
        if id(n) in skip or isinstance(n, ast.arg):
            return
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for child in n.decorator_list + n.args.defaults + [d for d in n.args.kw_defaults if d] + n.body:
                visit(child)
            return
        if isinstance(n, ast.AnnAssign):
            if n.value is not None:
                visit(n.value)
            return
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id not in names:
            names.append(n.id)
        for child in ast.iter_child_nodes(n):
            visit(child)

    visit(node)
    return names


def _lines(module: types.ModuleType, node: ast.stmt) -> list[str]:
    """The source lines of a top-level statement, decorators and comments within it included."""
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return inspect.getsource(module).splitlines()[first - 1:node.end_lineno]


def _check_no_molmini_import(where: str, node: ast.AST) -> None:
    for n in ast.walk(node):
        module = n.module if isinstance(n, ast.ImportFrom) else None
        names = [a.name for a in n.names] if isinstance(n, ast.Import) else [module or ""]
        if isinstance(n, (ast.Import, ast.ImportFrom)) and any(m.split(".")[0] == "molmini" for m in names):
            raise StandaloneError(f"{where} imports molmini inside its body ({ast.unparse(n)}); import it at the top "
                                  "of its module, so the self-contained files can copy what it names")


class SourceFile:
    """One generated file: the chunks of copied source in dependency order, the imports they need, and the name
    each object is bound to (two different objects under one name are an error)."""

    def __init__(self, substitutes: dict[int, Any], provided: dict[int, tuple[str, str]]):
        self.substitutes, self.provided = substitutes, provided
        self.names: dict[str, Any] = {}
        self.imports: list[str] = []
        self.relative: list[str] = []
        self.chunks: list[tuple[str, str]] = []  # (module name, source)
        self.visiting: set[tuple[str, str]] = set()
        self.copied: set[tuple[str, int]] = set()  # (module, line) of each statement copied (`A, B = ...` once)

    def _bind(self, name: str, obj: Any, where: str) -> bool:
        """Record that the file binds `name` to `obj`; False if it already does."""
        if name in self.names:
            if self.names[name] is obj or (_is_literal(obj) and self.names[name] == obj):
                return False
            raise StandaloneError(f"two different objects would be {name!r} in one generated file (the second from "
                                  f"{where}); rename one of them in molmini")
        self.names[name] = obj
        return True

    def need(self, module: types.ModuleType, name: str) -> None:
        """Make the file bind `name` to what it is in `module` (a name `module` does not define is a builtin or a
        local variable of the code that reads it: nothing to copy)."""
        if name not in vars(module) or (name.startswith("__") and name.endswith("__")):
            return
        key = (module.__name__, name)
        if key in self.visiting:  # a cycle through function bodies: the outer call emits it
            return
        obj = vars(module)[name]
        if name in self.names and self.names[name] is obj:
            return
        if id(obj) in self.substitutes:
            sub = self.substitutes[id(obj)]
            self.need(sys.modules[sub.__module__], sub.__name__)
            if self._bind(name, obj, module.__name__) and sub.__name__ != name:
                self.chunks.append((module.__name__, f"{name} = {sub.__name__}"))
            return
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and id(obj) in self.provided:
            stem, bound = self.provided[id(obj)]
            if self._bind(name, obj, module.__name__):
                self.relative.append(f"from .{stem} import {bound}" + (f" as {name}" if bound != name else ""))
            return
        node = _binding(module, name)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            self._need_import(module, name, node, obj)
            return
        if isinstance(node, ast.Try):
            if self._bind(name, obj, module.__name__):
                self.imports.append("\n".join(_lines(module, node)))
            return
        where = f"{module.__name__}.{name}"
        _check_no_molmini_import(where, node)
        self.visiting.add(key)
        source, deps = self._copied(module, node)
        for dep_module, dep in deps:
            self.need(dep_module, dep)
        self.visiting.discard(key)
        if self._bind(name, obj, where) and (module.__name__, node.lineno) not in self.copied:
            self.copied.add((module.__name__, node.lineno))
            self.chunks.append((module.__name__, source))

    def _need_import(self, module: types.ModuleType, name: str, node: ast.Import | ast.ImportFrom, obj: Any) -> None:
        alias = _bound_by_import(node)[name]
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "molmini":
            source = importlib.import_module(node.module)
            self.need(source, alias.name)
            if self._bind(name, obj, module.__name__) and alias.name != name:
                self.chunks.append((module.__name__, f"{name} = {alias.name}"))
            return
        if isinstance(node, ast.Import) and alias.name.split(".")[0] == "molmini":
            raise StandaloneError(f"{module.__name__} reads {name} as a module of molmini; import the names it uses")
        if self._bind(name, obj, module.__name__):
            as_part = f" as {alias.asname}" if alias.asname else ""
            self.imports.append(f"from {node.module} import {alias.name}{as_part}" if isinstance(node, ast.ImportFrom)
                                else f"import {alias.name}{as_part}")

    def _copied(self, module: types.ModuleType, node: ast.stmt) -> tuple[str, list[tuple[types.ModuleType, str]]]:
        """The source of a top-level definition and the (module, name) pairs it reads. In a class body, a member
        taken from another class (`embed = MolminiModel.embed`) is replaced by that member's own source."""
        lines = _lines(module, node)
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        skip: set[int] = set()
        deps: list[tuple[types.ModuleType, str]] = []
        replaced: list[tuple[int, int, list[str]]] = []
        for stmt in node.body if isinstance(node, ast.ClassDef) else []:
            member = _borrowed_member(module, stmt)
            if member is None:
                continue
            skip.add(id(stmt))
            function = inspect.unwrap(member.fget if isinstance(member, property) else member)
            indent = " " * stmt.col_offset
            member_source = textwrap.indent(textwrap.dedent(inspect.getsource(function)), indent).splitlines()
            replaced.append((stmt.lineno - first, stmt.end_lineno - first, member_source))
            member_module = sys.modules[function.__module__]
            member_node = ast.parse(textwrap.dedent(inspect.getsource(function)))
            _check_no_molmini_import(f"{function.__module__}.{function.__qualname__}", member_node)
            deps += [(member_module, n) for n in _loaded_names(member_node)]
        for start, end, member_source in sorted(replaced, reverse=True):
            lines[start:end + 1] = member_source
        deps = [(module, n) for n in _loaded_names(node, skip)] + deps
        return "\n".join(lines), deps

    def render(self, doc: str, roots: list[str]) -> str:
        modules = ", ".join(m.replace(".", "/") + ".py" for m in sorted({m for m, _ in self.chunks}))
        out = _wrapped_header(doc, modules) + "\n" + _import_block(self.imports)
        if self.relative:
            out += "\n" + "\n".join(sorted(set(self.relative))) + "\n"
        current, previous_one_line = None, False
        for module, source in self.chunks:
            one_line = "\n" not in source and not source.startswith(("def ", "class ", "@"))
            if module != current:
                out += "\n\n" + f"# ---- from {module.replace('.', '/')}.py ".ljust(116, "-") + "\n"
                current = module
            elif not (one_line and previous_one_line):
                out += "\n\n"
            out += source + "\n"
            previous_one_line = one_line
        return out + f"\n\n__all__ = {roots!r}\n"


def _wrapped_header(doc: str, modules: str) -> str:
    made = (f"Generated by molmini from its own source ({modules}): it needs torch, transformers, "
            "safetensors, pillow and numpy, not molmini. Do not edit; re-save the checkpoint with molmini to "
            "change it.")
    return f'"""{doc}\n\n{textwrap.fill(made, 116)}\n"""\nfrom __future__ import annotations\n'


def _import_block(imports: list[str]) -> str:
    """`import x` lines, then `from x import a, b` lines (one per module, wrapped), then try/except blocks."""
    plain = sorted({i for i in imports if i.startswith("import ")})
    by_module: dict[str, list[str]] = {}
    for line in imports:
        if line.startswith("from ") and "\n" not in line:
            module, _, names = line[5:].partition(" import ")
            by_module.setdefault(module, []).append(names)
    froms = []
    for module in sorted(by_module):
        line = f"from {module} import " + ", ".join(sorted(set(by_module[module])))
        froms.append(textwrap.fill(line, 118, subsequent_indent=" " * 4, break_long_words=False)
                     .replace(" import ", " import (", 1) + ")" if len(line) > 120 else line)
    blocks = [i for i in imports if "\n" in i]
    return "\n".join(plain + froms + blocks) + "\n"


def _borrowed_member(module: types.ModuleType, stmt: ast.stmt) -> Any:
    """The function (or property) a class-body statement `name = OtherClass.name` takes from another class,
    or None for any other statement."""
    if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)
            and isinstance(stmt.value, ast.Attribute) and isinstance(stmt.value.value, ast.Name)):
        return None
    owner = vars(module).get(stmt.value.value.id)
    if not inspect.isclass(owner) or stmt.value.attr not in vars(owner):
        return None
    member = vars(owner)[stmt.value.attr]
    if not (inspect.isfunction(member) or isinstance(member, property)):
        return None
    if stmt.targets[0].id != stmt.value.attr:
        raise StandaloneError(f"{module.__name__}: {ast.unparse(stmt)} renames a borrowed member; keep its name")
    return member


def _is_literal(obj: Any) -> bool:
    if isinstance(obj, (str, int, float, bool, bytes, type(None))):
        return True
    if isinstance(obj, (tuple, list, set, frozenset)):
        return all(_is_literal(o) for o in obj)
    return isinstance(obj, dict) and all(_is_literal(k) and _is_literal(v) for k, v in obj.items())


__all__ = ["CONFIGURATION", "MODELING", "PROCESSING", "StandaloneError", "standalone_files"]
