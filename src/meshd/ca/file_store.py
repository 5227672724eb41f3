"""Standalone CA store: Istio's four PEM files in a directory, created once and adopted afterwards.

    <dir>/ca-cert.pem ca-key.pem cert-chain.pem root-cert.pem   the self-signed root (created on first start)
    <dir>/cacerts/                                              a plugged-in CA, used instead when present

Several meshd instances may start at once on one directory: creation runs under an exclusive
`flock` on `<dir>/.lock`, so exactly one of them generates the root and the others adopt it (the
kernel releases the lock if the holder dies). Every file is written to a temporary name and renamed,
so a reader (an agent reading root-cert.pem) never sees half a file; ca-cert.pem is written last and
marks the set complete. Blocking: call it from a thread (`asyncio.to_thread`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
from collections.abc import Callable, Iterator

from meshd.ca.material import FILES, CaMaterial, InvalidCaMaterial

PLUGGED_DIR = "cacerts"
_WRITE_ORDER = ("root-cert.pem", "cert-chain.pem", "ca-key.pem", "ca-cert.pem")


def _read(directory: pathlib.Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in FILES if (directory / name).is_file()}


def _write_atomic(path: pathlib.Path, data: bytes, *, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(directory: pathlib.Path) -> Iterator[None]:
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def load_plugged(directory: pathlib.Path) -> CaMaterial | None:
    """The plugged-in CA in `<directory>/cacerts/`, if that directory exists."""
    plugged = directory / PLUGGED_DIR
    if not plugged.is_dir():
        return None
    try:
        return CaMaterial.from_files(_read(plugged))
    except InvalidCaMaterial as exc:
        raise InvalidCaMaterial(f"{plugged}: {exc}") from None


def load_or_create(directory: pathlib.Path, *, generate: Callable[[], CaMaterial]) -> tuple[CaMaterial, bool]:
    """The root in `directory`, generating and persisting it if absent. Returns (material, created)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _locked(directory):
        files = _read(directory)
        if "ca-cert.pem" in files:
            try:
                return CaMaterial.from_files(files), False
            except InvalidCaMaterial as exc:
                raise InvalidCaMaterial(f"{directory}: {exc}") from None
        # No ca-cert.pem: nothing was ever issued from this directory; (re)create the whole set.
        material = generate()
        contents = material.as_files()
        for name in _WRITE_ORDER:
            _write_atomic(directory / name, contents[name], mode=0o600 if name == "ca-key.pem" else 0o644)
        return material, True
