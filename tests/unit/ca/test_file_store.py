"""Standalone root store: concurrent first start of several meshd processes on one directory ends
with exactly one root; a plugged-in `cacerts/` directory is used instead."""

from __future__ import annotations

import datetime
import multiprocessing
import pathlib
import threading

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from meshd.ca import file_store
from meshd.ca.material import CaMaterial, generate_root, load

NOW = datetime.datetime.now(datetime.UTC)


def _generate() -> CaMaterial:
    return generate_root(now=datetime.datetime.now(datetime.UTC), trust_domain="cluster.local")


def _start(directory: str, barrier: object, results: object) -> None:
    barrier.wait()  # type: ignore[attr-defined]
    material, created = file_store.load_or_create(pathlib.Path(directory), generate=_generate)
    results.put((material.ca_cert, material.ca_key, created))  # type: ignore[attr-defined]


def test_concurrent_processes_create_exactly_one_root(tmp_path: pathlib.Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    n = 6
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_start, args=(str(tmp_path / "ca"), barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=60) for _ in range(n)]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert len({(cert, key) for cert, key, _ in outcomes}) == 1  # every instance holds the same root
    assert sum(created for _, _, created in outcomes) == 1  # and exactly one of them generated it
    on_disk = (tmp_path / "ca" / "ca-cert.pem").read_bytes()
    assert on_disk == outcomes[0][0] == (tmp_path / "ca" / "root-cert.pem").read_bytes()
    assert (tmp_path / "ca" / "ca-key.pem").stat().st_mode & 0o077 == 0  # the key is private


def test_concurrent_threads_create_exactly_one_root(tmp_path: pathlib.Path) -> None:
    out: list[tuple[bytes, bool]] = []
    barrier = threading.Barrier(8)

    def run() -> None:
        barrier.wait()
        material, created = file_store.load_or_create(tmp_path, generate=_generate)
        out.append((material.ca_cert, created))

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({cert for cert, _ in out}) == 1 and sum(c for _, c in out) == 1


def test_restart_adopts_the_persisted_root(tmp_path: pathlib.Path) -> None:
    first, created = file_store.load_or_create(tmp_path, generate=_generate)
    again, created_again = file_store.load_or_create(tmp_path, generate=_generate)
    assert created and not created_again and first == again
    root = load(again, now=NOW).root
    assert root.not_valid_after_utc - NOW > datetime.timedelta(days=3649)  # 10 years
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_plugged_in_directory(tmp_path: pathlib.Path) -> None:
    assert file_store.load_plugged(tmp_path) is None
    plugged = generate_root(now=NOW, trust_domain="example.org")
    (tmp_path / "cacerts").mkdir()
    for name, data in plugged.as_files().items():
        (tmp_path / "cacerts" / name).write_bytes(data)
    material = file_store.load_plugged(tmp_path)
    assert material is not None
    cert = x509.load_pem_x509_certificate(material.ca_cert)
    assert cert.public_bytes(serialization.Encoding.PEM) == plugged.ca_cert
