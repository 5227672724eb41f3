"""`meshd serve` flags of the CA and the secure port (kept here so cli.py only calls two functions)."""

from __future__ import annotations

import argparse
import pathlib
from typing import Any

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


def ca_settings(args: argparse.Namespace) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "ca_enabled": not args.no_ca,
        "ca_dir": pathlib.Path(args.ca_dir),
        "ca_token_file": pathlib.Path(args.ca_token_file) if args.ca_token_file else None,
        "trust_domain": args.trust_domain,
        "cluster_id": args.cluster_id,
        "secure_host": args.secure_host,
        "secure_port": args.secure_port,
        "ca_default_ttl_s": args.ca_default_ttl,
        "ca_max_ttl_s": args.ca_max_ttl,
    }
    if args.secure_san:
        settings["secure_sans"] = tuple(args.secure_san)
    return settings
