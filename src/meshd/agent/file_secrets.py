"""Certificate files served over the agent's SDS, as Istio's agent serves them to gateways: a Gateway
server's `serverCertificate` / `privateKey` become the secret `file-cert:<cert path>~<key path>`, its
`caCertificates` the secret `file-root:<ca path>`, read from the gateway pod's own files. A file that is
missing or not PEM is simply not served: Envoy keeps that listener warming (the server is not served,
closed) instead of refusing the whole listener update. Files are read again every few seconds: a
rotated certificate reaches Envoy without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2

from meshd.agent.sds import SecretState
from meshd.api import pem
from meshd.translate.gateway.tls import FILE_CERT, FILE_ROOT

ReadFile = Callable[[str], bytes | None]


def read_file(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)
    except OSError:
        return None


def file_secret(name: str, read: ReadFile) -> secret_pb2.Secret | None:
    """The secret a `file-cert:` / `file-root:` name stands for, or None (not such a name, or unusable)."""
    try:
        if name.startswith(FILE_CERT):
            cert_path, sep, key_path = name.removeprefix(FILE_CERT).partition("~")
            cert, key = read(cert_path), read(key_path)
            if not sep or cert is None or key is None:
                return None
            pem.check_key_pair(cert, key, cert_field=cert_path, key_field=key_path)
            return secret_pb2.Secret(
                name=name,
                tls_certificate=common_pb2.TlsCertificate(
                    certificate_chain=base_pb2.DataSource(inline_bytes=cert),
                    private_key=base_pb2.DataSource(inline_bytes=key),
                ),
            )
        if name.startswith(FILE_ROOT):
            path = name.removeprefix(FILE_ROOT)
            ca = read(path)
            if ca is None:
                return None
            pem.certificates(ca, what=path)
            return secret_pb2.Secret(
                name=name,
                validation_context=common_pb2.CertificateValidationContext(
                    trusted_ca=base_pb2.DataSource(inline_bytes=ca)
                ),
            )
    except ValueError:
        return None
    return None


def is_file_secret(name: str) -> bool:
    return name.startswith((FILE_CERT, FILE_ROOT))


async def serve_files(
    state: SecretState,
    *,
    log: logging.Logger,
    interval_s: float = 5.0,
    read: ReadFile = read_file,
) -> None:
    """Keep the file secrets Envoy asked for (`state.wanted`) in the SDS state, read again every
    `interval_s` and as soon as a new one is asked for. Runs until cancelled."""
    served: dict[str, secret_pb2.Secret] = {}
    while True:
        found = {name: s for name in sorted(state.wanted) if (s := file_secret(name, read)) is not None}
        if found != served:
            missing = sorted(set(state.wanted) - set(found))
            log.info("event=file_secrets served=%s missing=%s", ",".join(found), ",".join(missing))
            served = found
            await state.set_files(found)
        with contextlib.suppress(TimeoutError):  # (asyncio.timeout: Python 3.11's wait_for can swallow a cancel)
            async with asyncio.timeout(interval_s):
                await state.wanted_changed.wait()
        state.wanted_changed.clear()
