"""The real Istio binaries in `../shared/peers/istiod-1.14/` beside the checkout (read-only there):
unpacked once into a cache directory named by the archive's checksum. Tests that need one skip, naming
the path, where it is absent."""

from __future__ import annotations

import hashlib
import lzma
import os
import pathlib

import pytest

PEERS = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "peers" / "istiod-1.14"
CACHE = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "meshd-peers"


def peer_binary(name: str) -> pathlib.Path:
    """`name` (istioctl, pilot-discovery) unpacked from `<name>.xz`; skips the test when it is absent."""
    archive = PEERS / f"{name}.xz"
    if not archive.is_file():
        pytest.skip(f"{archive} is absent: the real {name} is not available on this machine")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()[:16]
    target = CACHE / digest / name
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        with lzma.open(archive) as src, tmp.open("wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        tmp.chmod(0o755)
        tmp.replace(target)
    return target
