"""kubernetes_asyncio's client imported by name (meshd/lazy_kube_client.py): the same objects, a fraction
of the modules. Each check runs in a fresh interpreter, since the stand-ins must be in place before the
library's first import."""

from __future__ import annotations

import importlib
import importlib.util
import json
import pathlib
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator

import pytest

from meshd.lazy_kube_client import LAZY_PACKAGES, _read_by_ast, _read_by_lines, exports_of, install


def _run(code: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120, check=True
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_meshd_uses_the_client_by_name_with_a_fraction_of_its_modules() -> None:
    result = _run(
        """
        import asyncio, importlib, json, sys
        import meshd
        from kubernetes_asyncio import client, config, watch
        from kubernetes_asyncio.client.exceptions import ApiException

        async def read():
            api = client.ApiClient()
            try:  # the deserializer looks model classes up by name on client.models
                return api._ApiClient__deserialize(
                    {"metadata": {"name": "ca", "labels": {"a": "b"}}, "data": {"k": "dg=="}}, "V1Secret")
            finally:
                await api.close()

        secret = asyncio.run(read())
        print(json.dumps({
            "secret": [type(secret).__name__, type(secret.metadata).__name__, secret.metadata.name],
            "same_class": client.CoreV1Api is importlib.import_module(
                "kubernetes_asyncio.client.api.core_v1_api").CoreV1Api,
            "exception": ApiException is client.ApiException,
            "watch": watch.Watch.__module__,
            "config": callable(config.load_kube_config),
            "modules": sum(1 for name in sys.modules if name.startswith("kubernetes_asyncio")),
        }))
        """
    )
    assert result["secret"] == ["V1Secret", "V1ObjectMeta", "ca"]
    assert result["same_class"] is True and result["exception"] is True and result["config"] is True
    assert result["watch"] == "kubernetes_asyncio.watch.watch"
    assert isinstance(result["modules"], int) and result["modules"] < 60  # the whole library is ~860


def test_every_name_the_library_exports_resolves_to_its_own_object() -> None:
    result = _run(
        """
        import json, sys
        import meshd
        import kubernetes_asyncio, kubernetes_asyncio.client as client
        from kubernetes_asyncio.client import api, models
        wrong = []
        for package in (client, api, models):
            for name in package.__all__:
                value = getattr(package, name)
                if getattr(value, "__name__", None) != name:
                    wrong.append(f"{package.__name__}.{name}")
        print(json.dumps({
            "wrong": wrong,
            "counts": [len(client.__all__), len(api.__all__), len(models.__all__)],
            "top": [kubernetes_asyncio.client is client, kubernetes_asyncio.watch.__name__],
            "version": client.__version__,
        }))
        """
    )
    assert result["wrong"] == []
    counts = result["counts"]
    assert isinstance(counts, list) and counts[0] > 700 and counts[1] > 50 and counts[2] > 600
    assert result["top"] == [True, "kubernetes_asyncio.watch"]
    assert isinstance(result["version"], str) and result["version"][:1].isdigit()


def test_an_already_imported_library_is_left_alone() -> None:
    result = _run(
        """
        import json, sys
        import kubernetes_asyncio.client
        from meshd.lazy_kube_client import install
        print(json.dumps({"installed": install(), "kind": type(sys.modules["kubernetes_asyncio.client"]).__name__}))
        """
    )
    assert result == {"installed": False, "kind": "module"}


def test_an_init_that_does_more_than_bind_names_is_not_read_as_names() -> None:
    package = "kubernetes_asyncio.client"
    plain = '"""doc"""\nfrom __future__ import absolute_import\n__version__ = "1.0"\n'
    binds = "from kubernetes_asyncio.client.api.core_v1_api import CoreV1Api\n"
    assert exports_of(plain + binds + '__all__ = ["CoreV1Api"]\n', package) == (
        {"CoreV1Api": ("kubernetes_asyncio.client.api.core_v1_api", "CoreV1Api")},
        "1.0",
    )
    assert exports_of(plain + "import kubernetes_asyncio.client.rest as rest\n", package) == (
        {"rest": ("kubernetes_asyncio.client.rest", None)},
        "1.0",
    )
    for extra in (
        "import os\n",  # a module from elsewhere
        "from os import path\n",
        "configure()\n",  # code that runs
        "DEFAULT = object()\n",  # a name that is not an import
        '__version__ = ".".join(["1", "0"])\n',  # a computed value
        '__all__ = ["CoreV1Api", "Missing"]\n',  # a listed name nobody binds
        "from .rest import RESTClientObject\n",  # relative
    ):
        assert exports_of(plain + binds + extra, package) is None, extra


@pytest.mark.parametrize("package", ["kubernetes_asyncio", *LAZY_PACKAGES[1:]])
def test_the_library_inits_are_read_by_lines_as_the_ast_reads_them(package: str) -> None:
    spec = importlib.util.find_spec("kubernetes_asyncio")
    assert spec is not None and spec.origin is not None
    init = pathlib.Path(spec.origin).parent.joinpath(*package.split(".")[1:], "__init__.py")
    source = init.read_text(encoding="utf-8")
    by_lines = _read_by_lines(source, package)
    assert by_lines is not None  # the fast reading applies to the installed library
    assert by_lines == _read_by_ast(source, package)
    assert len(by_lines[0]) > 5


_HEAD = '"""\n    doc\n"""\nfrom __future__ import absolute_import\n__version__ = "1.0"  # edited by a bot\n'
_BINDS = (
    "from kubernetes_asyncio.client.api.core_v1_api import CoreV1Api\nimport kubernetes_asyncio.client.rest as rest\n"
)


@pytest.mark.parametrize(
    "tail",
    [
        "",  # plain
        '__all__ = [\n    "CoreV1Api",\n    "rest",\n]\n',
        '__all__ = ["CoreV1Api"]\n',
        "from kubernetes_asyncio.client.api.x import A, B\n",  # two names on a line: left to the ast
        "from kubernetes_asyncio.client.api.x import (\n    A,\n)\n",
        "if True:\n    from kubernetes_asyncio.client.api.x import A\n",  # indented: runs conditionally
        "from kubernetes_asyncio.client.api.x \\\n    import A\n",  # a continued line
        '"""a string that is not the docstring"""\n',
        '__all__ = [\n    "CoreV1Api",\n    NAME,\n]\n',
        '__all__ = [\n    "Missing",\n]\n',  # listed, never bound
        "from os import path\n",
        "import os\n",
        "x = 1\n",
        '__version__ = "1" + "0"\n',
        "from .rest import RESTClientObject\n",
        "from kubernetes_asyncio.client.api.x import A; B = 1\n",
    ],
)
def test_the_line_reading_agrees_with_the_ast_or_leaves_the_init_to_it(tail: str) -> None:
    package = "kubernetes_asyncio.client"
    source = _HEAD + _BINDS + tail
    by_lines = _read_by_lines(source, package)
    assert by_lines is None or by_lines == _read_by_ast(source, package)
    assert exports_of(source, package) == _read_by_ast(source, package)


def test_lines_the_reading_does_not_know_are_left_to_the_ast() -> None:
    package = "kubernetes_asyncio.client"
    known = _HEAD + _BINDS + '__all__ = [\n    "CoreV1Api",\n]\n'
    assert _read_by_lines(known, package) == (
        {
            "CoreV1Api": ("kubernetes_asyncio.client.api.core_v1_api", "CoreV1Api"),
            "rest": ("kubernetes_asyncio.client.rest", None),
        },
        "1.0",
    )
    for unknown in (
        "from kubernetes_asyncio.client.api.x import A, B\n",
        "if True:\n    from kubernetes_asyncio.client.api.x import A\n",
        '"""a second string"""\n',
        '__all__ = [\n    "CoreV1Api",\n',
        "   # an indented comment\n",
        'from kubernetes_asyncio.client.api.x import A; B = """\n',
    ):
        assert _read_by_lines(known + unknown, package) is None, unknown
    assert _read_by_lines('"""never closed\nfrom kubernetes_asyncio.client.x import A\n', package) is None
    assert _read_by_lines('"""one""" + """two"""\n', package) is None


@pytest.fixture
def fake_library(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, str], None]]:
    """Writes a library `name` with the given `__init__` and a subpackage `sub` (its `Thing` bound by name,
    and a module `other` that fails if imported) on sys.path; forgets its modules afterwards."""
    names: list[str] = []

    def write(name: str, init: str) -> None:
        names.append(name)
        (tmp_path / name / "sub").mkdir(parents=True)
        (tmp_path / name / "__init__.py").write_text(init)
        (tmp_path / name / "sub" / "__init__.py").write_text(
            f"from {name}.sub.thing import Thing\n__all__ = ['Thing']\n"
        )
        (tmp_path / name / "sub" / "thing.py").write_text("class Thing:\n    pass\n")
        (tmp_path / name / "sub" / "other.py").write_text("raise AssertionError('imported although nobody asked')\n")

    monkeypatch.syspath_prepend(str(tmp_path))
    yield write
    for module in [m for m in sys.modules if m.split(".")[0] in names]:
        del sys.modules[module]


def test_a_fake_library_is_imported_name_by_name(fake_library: Callable[[str, str], None]) -> None:
    name = "lazyfake_plain"
    fake_library(name, f'"""doc"""\n__version__ = "2.0"\nimport {name}.sub as sub\n')
    assert install((name, f"{name}.sub")) is True
    package = importlib.import_module(name)
    assert f"{name}.sub.thing" not in sys.modules
    assert package.sub.Thing.__module__ == f"{name}.sub.thing"  # imported on first use
    assert f"{name}.sub.other" not in sys.modules
    assert package.__version__ == "2.0" and package.sub.__all__ == ["Thing"]
    assert install((name, f"{name}.sub")) is False  # already in place


def test_an_init_that_does_more_than_bind_names_runs_as_it_is(fake_library: Callable[[str, str], None]) -> None:
    name = "lazyfake_busy"
    fake_library(name, f"import os\nSEP = os.sep\nfrom {name}.sub.thing import Thing\n")
    assert install((name, f"{name}.sub")) is True
    package = importlib.import_module(name)
    assert package.SEP == "/"  # the __init__ ran, in the stand-in
    assert package.Thing.__module__ == f"{name}.sub.thing"
