"""kubernetes_asyncio's generated client, imported by name instead of whole.

The packages `kubernetes_asyncio`, `.client`, `.client.api` and `.client.models` import every one of their
~860 modules in their `__init__` (every API group and every model class of the Kubernetes API), although
meshd uses a dozen. Measured on `meshd serve` in Kubernetes mode (`make bench BENCH_ARGS="--peer istiod"`,
200 services with Sidecars): ~0.2 s less CPU at every start and ~30 MB less peak RSS without them.

`install()` puts a stand-in for each of those four packages into `sys.modules` before the first import.
A stand-in is a package (same name, same `__path__`, so its submodules import as usual) whose attributes
are the names its real `__init__` binds, each imported on first use: `client.CoreV1Api` imports
`kubernetes_asyncio.client.api.core_v1_api` alone, and `ApiClient`'s deserializer, which looks model
classes up on `kubernetes_asyncio.client.models` by name, imports just the models of the responses it
reads. Which module a name comes from is read from the real `__init__` at the first lookup (line by line
where it is all one-line imports, as the generated client's are: ~4 ms; otherwise its `ast`: ~15 ms), so a
new version of the library is followed and a process that never talks to Kubernetes (the node agent) reads
nothing. An `__init__` that does anything else than bind names from the library's own modules (or
binds fewer names than its `__all__`) is run as it is, in the stand-in, as an import would have run it.

Nothing else changes: the objects are the library's own. `install` runs when the `meshd` package is
imported (`meshd/__init__.py`), which is before any meshd module imports the library, and does nothing if
the library is already imported or not installed.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import pathlib
import re
import sys
import types

PACKAGE = "kubernetes_asyncio"
LAZY_PACKAGES = (PACKAGE, f"{PACKAGE}.client", f"{PACKAGE}.client.api", f"{PACKAGE}.client.models")
_ALLOWED_NAMES = {"__version__", "__project__", "__all__"}

# name -> (module it comes from, attribute of that module; None: the name is that module itself)
Exports = dict[str, tuple[str, str | None]]


def exports_of(source: str, package: str) -> tuple[Exports, str | None] | None:
    """The names a package's `__init__` binds and where each comes from, and its `__version__`; None when
    the `__init__` does more than bind names from the library's own modules (it must then run as it is)."""
    return _read_by_lines(source, package) or _read_by_ast(source, package)


_FROM = re.compile(r"from ([A-Za-z_][\w.]*) import ([A-Za-z_]\w*)(?: as ([A-Za-z_]\w*))?[ \t]*(?:#.*)?")
_IMPORT = re.compile(r"import ([A-Za-z_][\w.]*) as ([A-Za-z_]\w*)[ \t]*(?:#.*)?")
_CONSTANT = re.compile(r"(__version__|__project__) = (?:\"([^\"\\]*)\"|'([^'\\]*)')[ \t]*(?:#.*)?")
_ALL_ONE_LINE = re.compile(r'__all__ = \[((?:[ \t]*"[A-Za-z_]\w*",?)*)[ \t]*\][ \t]*(?:#.*)?')
_LISTED = re.compile(r"[ \t]*\"([A-Za-z_]\w*)\",?[ \t]*(?:#.*)?")


def _read_by_lines(source: str, package: str) -> tuple[Exports, str | None] | None:
    """`_read_by_ast`'s answer for an `__init__` made of one-line statements of the forms a generated
    client uses (its docstring, `from library.x import Y`, `import package.x as y`, `__version__ = "..."`,
    an `__all__` list of one name per line), in a quarter of the time; None for anything else, which
    `_read_by_ast` then reads (so a source this does not know is never read wrongly, only slower)."""
    library = package.split(".")[0]
    exports: Exports = {}
    listed: list[str] | None = None
    version: str | None = None
    lines = iter(source.splitlines())
    first = True
    for line in lines:
        if not line.strip() or line.startswith("#"):
            continue
        if first and line.startswith('"""'):  # the docstring: up to the line its closing quotes end
            rest: str | None = line[3:]
            while rest is not None and '"""' not in rest:
                rest = next(lines, None)
            if rest is None or rest.count('"""') != 1 or not rest.rstrip().endswith('"""'):
                return None
            first = False
            continue
        first = False
        if line.startswith("from __future__ import "):
            continue
        if match := _FROM.fullmatch(line):
            module, name, alias = match.groups()
            if not module.startswith(f"{library}."):
                return None
            exports[alias or name] = (module, name)
        elif match := _IMPORT.fullmatch(line):
            module, alias = match.groups()
            if not module.startswith(f"{package}."):
                return None
            exports[alias] = (module, None)
        elif match := _CONSTANT.fullmatch(line):
            if match.group(1) == "__version__":
                version = match.group(2) if match.group(2) is not None else match.group(3)
        elif (match := _ALL_ONE_LINE.fullmatch(line)) and listed is None:
            listed = re.findall(r'"(\w+)"', match.group(1))
        elif line == "__all__ = [" and listed is None:
            listed = []
            for item in lines:
                if item == "]":
                    break
                if not (named := _LISTED.fullmatch(item)):
                    return None
                listed.append(named.group(1))
            else:
                return None
        else:
            return None
    if listed is not None and not set(listed) <= set(exports):
        return None
    return exports, version


def _read_by_ast(source: str, package: str) -> tuple[Exports, str | None] | None:
    import ast  # here: only a process that uses the library reads its __init__

    library = package.split(".")[0]

    exports: Exports = {}
    listed: list[str] | None = None
    version: str | None = None
    for node in ast.parse(source).body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # the docstring
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith(f"{library}."):
            for alias in node.names:
                exports[alias.asname or alias.name] = (node.module or "", alias.name)
            continue
        if isinstance(node, ast.Import) and all(a.name.startswith(f"{package}.") and a.asname for a in node.names):
            for alias in node.names:
                exports[alias.asname or alias.name] = (alias.name, None)
            continue
        if isinstance(node, ast.Assign) and all(
            isinstance(t, ast.Name) and t.id in _ALLOWED_NAMES for t in node.targets
        ):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:  # computed: the __init__ must run
                return None
            targets = {t.id for t in node.targets if isinstance(t, ast.Name)}
            if "__all__" in targets:
                listed = [str(name) for name in value]
            if "__version__" in targets:
                version = str(value)
            continue
        return None
    if listed is not None and not set(listed) <= set(exports):
        return None
    return exports, version


class _LazyPackage(types.ModuleType):
    """A package whose exported names are imported on first use. Its `__init__` is read at the first
    lookup of a name it does not hold yet (so `import meshd` costs no parsing); an `__init__` that does more
    than bind names is then run in this module, as the import system would have run it."""

    def __init__(self, name: str, init: pathlib.Path) -> None:
        super().__init__(name)
        self._lazy_init = init
        self._lazy_exports: Exports | None = None

    def _exports(self) -> Exports:
        if self._lazy_exports is None:
            source = self._lazy_init.read_text(encoding="utf-8")
            read = exports_of(source, self.__name__)
            self._lazy_exports = {}
            if read is None:
                exec(compile(source, str(self._lazy_init), "exec"), self.__dict__)  # the library's own __init__
            else:
                self._lazy_exports, version = read
                self.__all__ = list(self._lazy_exports)
                if version is not None:
                    self.__version__ = version
        return self._lazy_exports

    def __getattr__(self, name: str) -> object:
        if name.startswith("_lazy_"):
            raise AttributeError(name)
        exports = self._exports()
        if name in self.__dict__:  # bound by reading the __init__ (__all__, __version__, or all of it)
            return self.__dict__[name]
        where = exports.get(name)
        if where is None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        module_name, attribute = where
        module = importlib.import_module(module_name)
        value = module if attribute is None else getattr(module, attribute)
        setattr(self, name, value)
        return value

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._exports()))


def install(packages: tuple[str, ...] = LAZY_PACKAGES) -> bool:
    """Put the stand-ins of `packages` (a library's top package first, then subpackages whose parents come
    before them) in place; False (and nothing changed) when the library is already imported or absent."""
    if any(name in sys.modules for name in packages):
        return False
    spec = importlib.util.find_spec(packages[0])
    if spec is None or not spec.submodule_search_locations:
        return False
    root = pathlib.Path(next(iter(spec.submodule_search_locations)))
    made: dict[str, _LazyPackage] = {}
    for name in packages:
        directory = root.joinpath(*name.split(".")[1:])
        init = directory / "__init__.py"
        if not init.is_file():
            return False
        module = _LazyPackage(name, init)
        module.__file__ = str(init)
        module.__path__ = [str(directory)]
        module.__spec__ = importlib.machinery.ModuleSpec(name, None, origin=str(init), is_package=True)
        module.__spec__.submodule_search_locations = [str(directory)]
        module.__package__ = name
        made[name] = module
        parent, _, child = name.rpartition(".")
        if parent:  # as the import system does for a package it loads: the parent names its child
            setattr(made[parent], child, module)
    sys.modules.update(made)
    return True
