"""Test helpers: the Python API of a TensorRT release, read from its pybind11 sources, and the
TensorRT names our code uses, read from its syntax tree.

`python_api(root)` parses `root/python/src/**/*.cpp` (every class, enum, method, property,
enum value, module function and attribute is a `py::class_<..>(m, "Name")` / `py::enum_`,
`.def("name"`, `.def_property*("name"`, `.def_readwrite("name"`, `.value("name"` or
`m.def` / `m.attr`) and the wheel's `tensorrt/__init__.py`. `used_api(paths)` collects
`trt.<Name>[.<attr>]` chains and attributes of values annotated `"trt.<Class>"`."""
from __future__ import annotations

import ast
import re
from pathlib import Path

_MEMBER = re.compile(r"\.\s*(?:def|def_static|def_property|def_property_readonly|def_property_readonly_static|"
                     r"def_readwrite|def_readonly|value)\s*\(\s*\"([A-Za-z_]\w*)\"")
_DECL = re.compile(r"py::(class_|enum_)\s*<")


def _skip_literal(src: str, i: int) -> int:
    """Index just past the string or character literal starting at src[i]."""
    quote, j = src[i], i + 1
    while src[j] != quote:
        j += 2 if src[j] == "\\" else 1
    return j + 1


def _strip_comments(src: str) -> str:
    out, i, n = [], 0, len(src)
    while i < n:
        if src[i] in "\"'":
            j = _skip_literal(src, i)
            out.append(src[i:j])
            i = j
        elif src.startswith("//", i):
            i = src.find("\n", i)
            i = n if i < 0 else i
        elif src.startswith("/*", i):
            i = src.find("*/", i) + 2
        else:
            out.append(src[i])
            i += 1
    return "".join(out)


def _scan(src: str, i: int, stop, opening: str, closing: str) -> int:
    """Index of the first position from i where stop(char, depth) holds, the given brackets
    counted and literals skipped."""
    depth = 0
    while i < len(src):
        c = src[i]
        if c in "\"'":
            i = _skip_literal(src, i)
            continue
        if c in opening:
            depth += 1
        elif c in closing:
            depth -= 1
        if stop(c, depth):
            return i
        i += 1
    return i


def _template_end(src: str, i: int) -> int:
    """Index just past the '>' closing the '<' at src[i]."""
    return _scan(src, i, lambda c, depth: c == ">" and depth == 0, "<", ">") + 1


def _statement_end(src: str, i: int) -> int:
    """Index of the ';' ending the statement that starts at i."""
    return _scan(src, i, lambda c, depth: c == ";" and depth <= 0, "({[", ")}]")


def _split_template_args(text: str) -> list[str]:
    args, depth, cur = [], 0, ""
    for c in text:
        if c == "<":
            depth += 1
        elif c == ">":
            depth -= 1
        if c == "," and depth == 0:
            args.append(cur.strip())
            cur = ""
        else:
            cur += c
    return args + [cur.strip()]


def python_api(root: Path) -> dict[str, set[str]]:
    """{class or enum name: its Python members (inherited ones included)}; key '' holds the
    module's own names (classes, enums, functions, attributes)."""
    members: dict[str, set[str]] = {"": set()}
    cpp_to_py: dict[str, str] = {}
    bases: dict[str, list[str]] = {}
    exported: list[tuple[str, str]] = []      # (scope python name, enum python name) with export_values
    overridable: list[tuple[str, str]] = []   # (C++ class, python method name)
    for cpp in sorted((root / "python" / "src").rglob("*.cpp")):
        src = _strip_comments(cpp.read_text(errors="replace"))
        variables: dict[str, str] = {}         # C++ variable -> python class it binds
        for m in _DECL.finditer(src):
            t_end = _template_end(src, m.end() - 1)
            targs = _split_template_args(src[m.end():t_end - 1])
            rest = re.match(r"\s*(\w+)?\s*([({])", src[t_end:])
            if not rest:
                continue
            var = rest.group(1)
            open_at = t_end + rest.start(2)
            args = re.match(r"\s*(\w+)\s*,\s*\"(\w+)\"", src[open_at + 1:])
            if not args:
                continue
            scope, name = args.groups()
            end = _statement_end(src, open_at)
            chain = src[open_at:end]
            members.setdefault(name, set()).update(_MEMBER.findall(chain))
            cpp_to_py[targs[0]] = name
            bases[name] = targs[1:]
            if var:
                variables[var] = name
            scope_name = "" if scope == "m" else variables.get(scope, scope)
            members.setdefault(scope_name, set()).add(name)
            if m.group(1) == "enum_" and "export_values" in chain:
                exported.append((scope_name, name))
        for var, name in variables.items():   # statements like `var.def(...)` after the declaration
            for m in re.finditer(rf"\b{var}\s*\.", src):
                members[name].update(_MEMBER.findall(src[m.start():_statement_end(src, m.start())]))
        members[""].update(re.findall(r"\bm\.(?:def|attr)\s*\(\s*\"(\w+)\"", src))
        # methods Python subclasses may override (trampolines), e.g. IProgressMonitor.phase_start
        overridable.extend(re.findall(r"PYBIND11_OVERRIDE?(?:LOAD)?(?:_PURE)?_NAME\s*\([^,]+,\s*([\w:]+)\s*,\s*\"(\w+)\"",
                                      src))
    for scope, enum in exported:
        members.setdefault(scope, set()).update(members.get(enum, set()))
    for cpp_class, method in overridable:
        if cpp_class in cpp_to_py:
            members[cpp_to_py[cpp_class]].add(method)
    init = next((root / "python" / "packaging").rglob("tensorrt/__init__.py"), None)
    if init is not None:
        tree = ast.parse(init.read_text().replace("##", "_"))
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                members[""].add(node.name)
            elif isinstance(node, ast.Assign):
                members[""].update(t.id for t in node.targets if isinstance(t, ast.Name))

    def resolve(name: str, seen=()) -> set[str]:
        out = set(members.get(name, set()))
        for b in bases.get(name, []):
            if b in cpp_to_py and cpp_to_py[b] not in seen:
                out |= resolve(cpp_to_py[b], (*seen, name))
        return out

    return {name: resolve(name) for name in members}


# --------------------------------------------------------------------- what our code uses
def _annotation_class(node) -> str | None:
    """`trt.ICudaEngine` -> 'ICudaEngine', written as a string or, under `from __future__ import
    annotations` (ruff's UP037 unquotes them), as the bare expression; `trt.X | None` too."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        try:
            node = ast.parse(node.value, mode="eval").body
        except SyntaxError:
            return None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _annotation_class(node.left) or _annotation_class(node.right)
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "trt":
        return node.attr
    return None


def _key(node) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return f"self.{node.attr}"
    return None


def uses_tensorrt(tree: ast.AST) -> bool:
    """The module imports tensorrt, gets it from import_tensorrt(), or through the one lazy-import
    helper (import_optional("tensorrt", ...))."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name == "tensorrt" for a in node.names):
            return True
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "import_tensorrt":
            return True
        if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "import_optional" and node.args
                and isinstance(node.args[0], ast.Constant) and node.args[0].value == "tensorrt"):
            return True
    return False


def _functions(tree: ast.AST) -> dict[int, str]:
    """id(node) -> name of the innermost function holding it."""
    where = {}
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                where[id(node)] = fn.name     # outer functions come first in the walk
    return where


def used_api(tree: ast.AST) -> set[tuple[str, str, str | None]]:
    """{(class or '' for the module, attribute, enclosing function or None)} of the TensorRT
    names a module uses: `trt.X`, `trt.X.Y` (Y a member of class/enum X), `v.attr` for values
    annotated "trt.Class" (locals, parameters, `self.` attributes and class-level
    declarations), and the methods of our subclasses of TensorRT classes."""
    types: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign) and _annotation_class(node.annotation) and _key(node.target):
            types[_key(node.target)] = _annotation_class(node.annotation)
        elif isinstance(node, ast.arg) and _annotation_class(node.annotation):
            types[node.arg] = _annotation_class(node.annotation)
        elif isinstance(node, ast.ClassDef):          # class-level declarations describe self.<name>
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and _annotation_class(item.annotation) and _key(item.target):
                    types[f"self.{_key(item.target)}"] = _annotation_class(item.annotation)
    where = _functions(tree)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            fn = where.get(id(node))
            if isinstance(node.value, ast.Name) and node.value.id == "trt":
                found.add(("", node.attr, fn))
            elif (isinstance(node.value, ast.Attribute) and isinstance(node.value.value, ast.Name)
                  and node.value.value.id == "trt"):
                found.add((node.value.attr, node.attr, fn))
            elif _key(node.value) in types:
                found.add((types[_key(node.value)], node.attr, fn))
        elif isinstance(node, ast.ClassDef):          # TensorRT calls these by name
            for base in node.bases:
                if isinstance(base, ast.Attribute) and isinstance(base.value, ast.Name) and base.value.id == "trt":
                    found |= {(base.attr, item.name, item.name) for item in node.body
                              if isinstance(item, ast.FunctionDef) and not item.name.startswith("_")}
    return {f for f in found if not (f[1].startswith("__") and f[1] != "__version__")}
