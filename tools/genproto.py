"""Compile proto/ into src/meshd/_gen/ with grpcio-tools (run by `make proto`).

`python tools/genproto.py OUTDIR` writes the generated modules into OUTDIR; the
test suite calls it with a temporary directory and compares, so stale generated
code fails the build.
"""

from __future__ import annotations

import pathlib
import sys

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PACKAGE_PREFIX = "meshd._gen."


def generate(out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Generate Python code for every .proto under proto/ into out_dir; return the files written."""
    import grpc_tools

    out_dir.mkdir(parents=True, exist_ok=True)
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--pyi_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written: list[pathlib.Path] = []
    for path in sorted(out_dir.rglob("*")):
        if path.suffix not in (".py", ".pyi"):
            continue
        text = path.read_text()
        # Generated code imports siblings by proto path (`from istio.v1.auth import ...`);
        # make those imports absolute inside meshd._gen.
        for top in {p.split("/", 1)[0] for p in protos}:
            text = text.replace(f"from {top}.", f"from {PACKAGE_PREFIX}{top}.")
        path.write_text(text)
        written.append(path)
    directories = {out_dir}
    for path in written:
        directories.update(d for d in path.parents if out_dir in (d, *d.parents))
    for directory in sorted(directories):
        init = directory / "__init__.py"
        if not init.exists():
            init.write_text("")
            written.append(init)
    return written


if __name__ == "__main__":
    target = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "src" / "meshd" / "_gen"
    for f in generate(target):
        print(f.relative_to(target))
