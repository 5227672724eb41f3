"""`meshd iptables`: install (or print with --dry-run, or remove with --clean) the pod's capture rules."""

from __future__ import annotations

import argparse
import sys

from meshd.capture.apply import CaptureApplyError, apply_nat
from meshd.capture.options import ALL, INBOUND_PORT, OUTBOUND_PORT, PROXY_UID, CaptureOptionError, build_options
from meshd.capture.rules import nat_rules, render


def add_iptables_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser("iptables", help="install the NAT rules that capture a pod's traffic into its Envoy")
    cmd.add_argument("--proxy-uid", default=str(PROXY_UID), help="UID of the proxy, never captured")
    cmd.add_argument("--proxy-gid", default=None, help="GID of the proxy, never captured (default: --proxy-uid)")
    cmd.add_argument("--include-outbound-ip-ranges", default=ALL, help="CIDRs captured outbound, comma-separated; *")
    cmd.add_argument("--exclude-outbound-ip-ranges", default="", help="CIDRs never captured outbound")
    cmd.add_argument("--include-inbound-ports", default=ALL, help="ports captured inbound; * for all, empty for none")
    cmd.add_argument("--exclude-inbound-ports", default="", help="ports never captured inbound")
    cmd.add_argument("--exclude-outbound-ports", default="", help="destination ports never captured outbound")
    cmd.add_argument("--dry-run", action="store_true", help="print the rules (iptables-restore format), apply nothing")
    cmd.add_argument("--clean", action="store_true", help="remove meshd's rules instead of installing them")
    cmd.set_defaults(func=_iptables)


def _iptables(args: argparse.Namespace) -> int:
    try:
        options = build_options(
            proxy_uid=args.proxy_uid,
            proxy_gid=args.proxy_gid,
            include_outbound_ip_ranges=args.include_outbound_ip_ranges,
            exclude_outbound_ip_ranges=args.exclude_outbound_ip_ranges,
            include_inbound_ports=args.include_inbound_ports,
            exclude_inbound_ports=args.exclude_inbound_ports,
            exclude_outbound_ports=args.exclude_outbound_ports,
        )
    except CaptureOptionError as exc:
        sys.stderr.write(f"meshd iptables: {exc}\n")
        return 2
    ours = [] if args.clean else nat_rules(options)
    if args.dry_run:
        sys.stdout.write("*nat\nCOMMIT\n" if args.clean else render(options))
        return 0
    try:
        apply_nat(ours)
    except CaptureApplyError as exc:
        sys.stderr.write(f"meshd iptables: {exc}\n")
        return 1
    action = "removed" if args.clean else f"installed (outbound -> {OUTBOUND_PORT}, inbound -> {INBOUND_PORT})"
    sys.stderr.write(f"meshd iptables: capture rules {action}\n")
    return 0
