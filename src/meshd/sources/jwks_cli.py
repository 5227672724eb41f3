"""`meshd serve` flags of the JWKS fetcher (cli.py maps them onto Settings)."""

from __future__ import annotations

import argparse

from meshd.settings import Settings


def add_jwks_arguments(parser: argparse.ArgumentParser, defaults: Settings) -> None:
    group = parser.add_argument_group("RequestAuthentication key sets (jwksUri, fetched by meshd)")
    group.add_argument("--jwks-refresh-interval", type=float, default=defaults.jwks_refresh_s, help="seconds")
    group.add_argument(
        "--jwks-retry-interval",
        type=float,
        default=defaults.jwks_retry_s,
        help="seconds before a failed fetch is retried (doubling up to the refresh interval)",
    )
    group.add_argument(
        "--jwks-fetch-timeout",
        type=float,
        default=defaults.jwks_fetch_timeout_s,
        help="seconds, for rules without `timeout`",
    )
    group.add_argument("--jwks-max-bytes", type=int, default=defaults.jwks_max_bytes, help="largest key set read")
    group.add_argument(
        "--jwks-allow-loopback", action="store_true", help="let jwksUri reach loopback addresses (refused by default)"
    )
    group.add_argument(
        "--jwks-allow-link-local",
        action="store_true",
        help="let jwksUri reach link-local and cloud metadata addresses (refused by default)",
    )
