"""`meshd serve` flags of the CA and the secure port (cli.py maps them onto Settings)."""

from __future__ import annotations

import argparse

from meshd.settings import Settings


def add_ca_arguments(parser: argparse.ArgumentParser, defaults: Settings) -> None:
    group = parser.add_argument_group("CA and secure port (15012)")
    group.add_argument("--no-ca", action="store_true", help="no CA and no secure port")
    group.add_argument(
        "--ca-dir", default=str(defaults.ca_dir), help="standalone CA store (cacerts/ inside: plugged-in CA)"
    )
    group.add_argument("--ca-token-file", help="standalone: YAML token -> {namespace, serviceAccount}")
    group.add_argument("--trust-domain", default=defaults.trust_domain)
    group.add_argument("--cluster-id", default=defaults.cluster_id)
    group.add_argument("--secure-host", default=defaults.secure_host)
    group.add_argument("--secure-port", type=int, default=defaults.secure_port, help="TLS port: CSRs and xDS")
    group.add_argument(
        "--secure-san",
        action="append",
        help="SAN of meshd's serving certificate besides meshd.<ns>.svc and istiod.<ns>.svc "
        f"(repeatable; default: {', '.join(defaults.secure_sans)})",
    )
    group.add_argument("--ca-default-ttl", type=int, default=defaults.ca_default_ttl_s, help="seconds")
    group.add_argument("--ca-max-ttl", type=int, default=defaults.ca_max_ttl_s, help="seconds")
    group.add_argument("--secure-max-connections", type=int, default=defaults.secure_max_connections)
    group.add_argument(
        "--tls-handshake-timeout", type=float, default=defaults.tls_handshake_timeout_s, help="seconds (secure port)"
    )
    group.add_argument(
        "--first-request-timeout",
        type=float,
        default=defaults.first_request_timeout_s,
        help="seconds: a TLS connection to the secure port that sends no request by then is closed",
    )
    group.add_argument(
        "--serving-cert-ttl",
        type=int,
        default=defaults.serving_cert_ttl_s,
        help="seconds: lifetime of meshd's own serving certificates (15012, CA-issued webhook), renewed at half "
        "life (default: --ca-max-ttl)",
    )
