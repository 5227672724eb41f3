"""Generated protobuf/gRPC code in src/meshd/_gen/ is what tools/genproto.py produces from proto/
today: regenerate into a temporary directory and compare byte for byte."""

from __future__ import annotations

import importlib.util
import pathlib
from types import ModuleType

ROOT = pathlib.Path(__file__).resolve().parents[2]
GENERATED = ROOT / "src" / "meshd" / "_gen"


def load_genproto() -> ModuleType:
    spec = importlib.util.spec_from_file_location("meshd_tools_genproto", ROOT / "tools" / "genproto.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def files_under(directory: pathlib.Path) -> set[str]:
    return {
        str(p.relative_to(directory))
        for p in directory.rglob("*")
        if p.is_file() and p.suffix in (".py", ".pyi") and "__pycache__" not in p.parts
    }


def test_generated_code_is_not_stale(tmp_path: pathlib.Path) -> None:
    written = load_genproto().generate(tmp_path)

    fresh = files_under(tmp_path)
    assert {str(p.relative_to(tmp_path)) for p in written} == fresh
    assert any(name.endswith("_pb2.py") for name in fresh)
    assert any(name.endswith("_pb2_grpc.py") for name in fresh)
    assert fresh == files_under(GENERATED), "run `python tools/genproto.py` to regenerate src/meshd/_gen"
    stale = sorted(name for name in fresh if (tmp_path / name).read_bytes() != (GENERATED / name).read_bytes())
    assert stale == [], f"stale generated files {stale}: run `python tools/genproto.py`"
