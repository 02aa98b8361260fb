"""python/torchspark/_C.pyi describes the whole native module torchspark._C.

The stub is parsed with ``ast`` and compared with the built module: the set of
names (functions, classes, attributes), each class's methods and properties
(read-only or not), and each function's and method's parameter names and
defaults as pybind11 reports them in the first line(s) of ``__doc__``
(overloaded functions: every signature, in order). A binding change that the
stub does not follow fails here.
"""

from __future__ import annotations

import ast
import pathlib
import types

import pytest

import torchspark
from torchspark import _C

# The source tree's stub (the one to keep true); the installed copy when the
# tests run outside a checkout.
_SOURCE_STUB = pathlib.Path(__file__).resolve().parents[1] / "python" / "torchspark" / "_C.pyi"
STUB = (
    _SOURCE_STUB
    if _SOURCE_STUB.is_file()
    else pathlib.Path(torchspark.__file__).with_name("_C.pyi")
)

# A parameter: (name, default or None). A default is kept as the text of a
# Python literal's repr where it is one (so 0 and 0, -1.0 and -1.0 compare),
# else as written ("torch.float32"). "*name" / "**name" for variadics.
Param = tuple[str, str | None]


def _default(text: str) -> str:
    try:
        return repr(ast.literal_eval(text))
    except (ValueError, SyntaxError):
        return text.strip()


# ---- the stub ----


def _stub_params(fn: ast.FunctionDef, method: bool) -> list[Param]:
    args = fn.args
    positional = args.posonlyargs + args.args
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults))
    defaults += args.defaults
    params: list[Param] = [
        (a.arg, None if d is None else _default(ast.unparse(d)))
        for a, d in zip(positional, defaults, strict=True)
    ]
    if args.vararg is not None:
        params.append(("*" + args.vararg.arg, None))
    for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True):
        params.append((a.arg, None if d is None else _default(ast.unparse(d))))
    if args.kwarg is not None:
        params.append(("**" + args.kwarg.arg, None))
    if method:
        assert params and params[0][0] == "self", f"{fn.name}: a method without self"
        params = params[1:]
    return params


def _decorators(fn: ast.FunctionDef) -> set[str]:
    return {ast.unparse(d) for d in fn.decorator_list}


class StubClass:
    def __init__(self, node: ast.ClassDef) -> None:
        self.methods: dict[str, list[list[Param]]] = {}
        self.properties: dict[str, bool] = {}  # name -> writable
        for item in node.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                self.properties[item.target.id] = True  # a plain field: read-write
            elif isinstance(item, ast.FunctionDef):
                decorators = _decorators(item)
                if "property" in decorators:
                    self.properties[item.name] = False
                elif f"{item.name}.setter" in decorators:
                    self.properties[item.name] = True
                else:
                    self.methods.setdefault(item.name, []).append(_stub_params(item, True))


class Stub:
    def __init__(self, source: str) -> None:
        tree = ast.parse(source)
        self.functions: dict[str, list[list[Param]]] = {}
        self.classes: dict[str, StubClass] = {}
        self.attributes: set[str] = set()
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                self.functions.setdefault(node.name, []).append(_stub_params(node, False))
            elif isinstance(node, ast.ClassDef):
                self.classes[node.name] = StubClass(node)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                self.attributes.add(node.target.id)
            elif isinstance(node, ast.Assign):
                self.attributes.update(t.id for t in node.targets if isinstance(t, ast.Name))

    def names(self) -> set[str]:
        return set(self.functions) | set(self.classes) | self.attributes


# ---- the live module, as pybind11 describes it ----


def _split_top_level(text: str) -> list[str]:
    """Splits at commas outside brackets and quotes."""
    parts, depth, quote, start = [], 0, "", 0
    for i, c in enumerate(text):
        if quote:
            if c == quote and text[i - 1] != "\\":
                quote = ""
        elif c in "'\"":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _parse_signature(line: str, name: str) -> list[Param]:
    """`name(a: T, b: U = 1, **kwargs) -> R` -> [("a", None), ("b", "1"), ("**kwargs", None)]."""
    assert line.startswith(name + "("), f"not a signature of {name}: {line!r}"
    # The parameter list ends at the parenthesis matching the first one.
    depth, end = 0, len(line)
    for i, c in enumerate(line):
        depth += (c == "(") - (c == ")")
        if depth == 0 and c == ")":
            end = i
            break
    params: list[Param] = []
    for part in _split_top_level(line[len(name) + 1 : end]):
        if part.startswith("*"):
            params.append((part.split(":")[0].strip(), None))
            continue
        head, eq, default = part.partition("=")
        # pybind11 writes "name: type = default"; a type may hold no "=".
        params.append((head.split(":")[0].strip(), _default(default) if eq else None))
    return params


def live_signatures(obj: object, name: str, method: bool) -> list[list[Param]]:
    doc = obj.__doc__ or ""
    lines = doc.splitlines()
    if len(lines) > 1 and lines[1].strip() == "Overloaded function.":
        sigs = [
            line.split(". ", 1)[1]
            for line in lines
            if line[:1].isdigit() and ". " in line and line.split(". ", 1)[1].startswith(name)
        ]
    else:
        sigs = lines[:1]
    out = []
    for sig in sigs:
        params = _parse_signature(sig, name)
        if method:
            assert params and params[0][0] == "self", f"{name}: {sig!r}"
            params = params[1:]
        out.append(params)
    return out


def _is_function(obj: object) -> bool:
    return isinstance(obj, types.BuiltinFunctionType)


def live_class(cls: type) -> tuple[dict[str, list[list[Param]]], dict[str, bool]]:
    methods: dict[str, list[list[Param]]] = {}
    properties: dict[str, bool] = {}
    for name, value in vars(cls).items():
        if isinstance(value, property):
            properties[name] = value.fset is not None
        elif callable(value):
            if name.startswith("_") and not (value.__doc__ or "").startswith(name + "("):
                # pybind11's own machinery (_pybind11_conduit_v1_, the
                # no-constructor __init__), not a binding of ours.
                continue
            methods[name] = live_signatures(value, name, True)
    return methods, properties


def live_names() -> set[str]:
    return {name for name in vars(_C) if not name.startswith("__")}


@pytest.fixture(scope="module")
def stub() -> Stub:
    return Stub(STUB.read_text())


# ---- the checks ----


def test_names(stub: Stub) -> None:
    live = live_names()
    assert live - stub.names() == set(), "in torchspark._C but not in _C.pyi"
    assert stub.names() - live == set(), "in _C.pyi but not in torchspark._C"


def test_kinds_of_names(stub: Stub) -> None:
    for name in live_names():
        value = getattr(_C, name)
        if isinstance(value, type):
            assert name in stub.classes, f"{name} is a class"
        elif _is_function(value):
            assert name in stub.functions, f"{name} is a function"
        else:
            assert name in stub.attributes, f"{name} is an attribute"


def test_function_signatures(stub: Stub) -> None:
    for name, sigs in stub.functions.items():
        value = getattr(_C, name)
        assert live_signatures(value, name, False) == sigs, f"{name}: {value.__doc__}"


def test_class_members(stub: Stub) -> None:
    for name, cls in stub.classes.items():
        methods, properties = live_class(getattr(_C, name))
        assert set(methods) == set(cls.methods), f"{name}: methods"
        assert properties == cls.properties, f"{name}: properties (name -> writable)"


def test_method_signatures(stub: Stub) -> None:
    for cname, cls in stub.classes.items():
        live, _ = live_class(getattr(_C, cname))
        for name, sigs in cls.methods.items():
            doc = getattr(getattr(_C, cname), name).__doc__
            assert live[name] == sigs, f"{cname}.{name}: {doc}"


# ---- the checker itself ----


def test_parse_signature() -> None:
    line = (
        "f(self: m.C, a: Optional[list[int]] = None, b: str = 'x, y', "
        "c: dict[str, int] = {}, d: float = -1.0, **kwargs) -> tuple[int, int]"
    )
    assert _parse_signature(line, "f") == [
        ("self", None),
        ("a", "None"),
        ("b", "'x, y'"),
        ("c", "{}"),
        ("d", "-1.0"),
        ("**kwargs", None),
    ]
    assert _parse_signature("g(dtype: torch.dtype = torch.float32) -> None", "g") == [
        ("dtype", "torch.float32")
    ]


DRIFTS = [
    # A renamed parameter, a changed default, a missing one, an extra function,
    # a missing method, a property made writable, a missing overload.
    ("num_runners: int = 1", "runners: int = 1"),
    ('nulls: str = "error",\n    fill', 'nulls: str = "fill",\n    fill'),
    ("engine_closed: type[BaseException],\n", ""),
    ("def input_kinds()", "def input_kind_names() -> list[str]: ...\ndef input_kinds()"),
    ("    def flush(self) -> None: ...\n", ""),
    ("    @property\n    def closed(self) -> bool: ...\n", "    closed: bool\n"),
    ("    @overload\n    def __init__(self) -> None: ...\n", ""),
]


@pytest.mark.parametrize("old,new", DRIFTS)
def test_a_drifted_stub_fails(old: str, new: str) -> None:
    source = STUB.read_text()
    assert old in source, f"the drift fixture no longer matches the stub: {old!r}"
    drifted = Stub(source.replace(old, new, 1))
    checks = [
        test_names,
        test_kinds_of_names,
        test_function_signatures,
        test_class_members,
        test_method_signatures,
    ]
    failed = 0
    for check in checks:
        try:
            check(drifted)
        except (AssertionError, AttributeError):
            failed += 1
    assert failed, f"no check noticed {old!r} -> {new!r}"
