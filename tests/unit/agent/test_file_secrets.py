"""Certificate files served by the agent over SDS (`file-cert:<cert>~<key>`, `file-root:<ca>`, Istio's names):
read when Envoy asks for them, left out while missing or not PEM (Envoy keeps waiting, never gets a broken
certificate), served again when they change."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pathlib
from collections.abc import Callable

from meshd.agent.file_secrets import file_secret, read_file, serve_files
from meshd.agent.sds import SecretState
from tests.certs import Authority


def test_cert_and_root_names_become_secrets_and_unusable_files_none(tmp_path: pathlib.Path) -> None:
    ca = Authority()
    cert, key = ca.issue("gw.example.com").write(tmp_path, "server")
    (tmp_path / "ca.pem").write_bytes(ca.pem)
    served = file_secret(f"file-cert:{cert}~{key}", lambda p: pathlib.Path(p).read_bytes())
    assert served is not None and served.tls_certificate.certificate_chain.inline_bytes == cert.read_bytes()
    root = file_secret(f"file-root:{tmp_path / 'ca.pem'}", lambda p: pathlib.Path(p).read_bytes())
    assert root is not None and root.validation_context.trusted_ca.inline_bytes == ca.pem
    missing = tmp_path / "missing.pem"
    assert file_secret(f"file-cert:{missing}~{key}", lambda p: None if p == str(missing) else b"") is None
    (tmp_path / "junk.pem").write_text("not a certificate")
    assert file_secret(f"file-root:{tmp_path / 'junk.pem'}", lambda p: pathlib.Path(p).read_bytes()) is None
    other_key = ca.issue("other").write(tmp_path, "other")[1]
    assert file_secret(f"file-cert:{cert}~{other_key}", lambda p: pathlib.Path(p).read_bytes()) is None
    assert file_secret("default", lambda p: b"") is None


async def test_the_agent_serves_what_envoy_asks_for_once_it_exists(tmp_path: pathlib.Path) -> None:
    ca = Authority()
    name = f"file-root:{tmp_path / 'ca.pem'}"
    state = SecretState()
    reads: list[str] = []

    def read(path: str) -> bytes | None:
        reads.append(path)
        return read_file(path)

    async def until(done: Callable[[], bool], what: str) -> None:
        deadline = asyncio.get_running_loop().time() + 10
        while not done():
            assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.01)

    task = asyncio.create_task(serve_files(state, log=logging.getLogger("test"), interval_s=0.05, read=read))
    try:
        state.want({name, "default"})
        assert state.wanted == {name}  # the workload's own secrets are not files
        await until(lambda: len(reads) >= 3, "three reads of the missing file")
        assert state.get(name) is None  # missing: not served (Envoy waits)
        (tmp_path / "ca.pem").write_bytes(ca.pem)
        await until(lambda: state.get(name) is not None, "the file served once it exists")
        secret = state.get(name)
        assert secret is not None and secret.validation_context.trusted_ca.inline_bytes == ca.pem
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
