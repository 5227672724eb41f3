"""The NAT rules that send a pod's TCP traffic through its Envoy, with Istio's chain names.

Outbound: OUTPUT -> ISTIO_OUTPUT -> ISTIO_REDIRECT (REDIRECT to 15001), except the proxy's own traffic
(its UID/GID), loopback traffic, traffic from 127.0.0.6 (Envoy's inbound passthrough source) and the
exclusions. Inbound: PREROUTING -> ISTIO_INBOUND -> ISTIO_IN_REDIRECT (REDIRECT to 15006), except
Envoy's own ports and the exclusions. Pure: options in, `iptables-restore` lines out.
"""

from __future__ import annotations

from meshd.capture.options import PROXY_PORTS, CaptureOptions

CHAINS = ("ISTIO_INBOUND", "ISTIO_REDIRECT", "ISTIO_IN_REDIRECT", "ISTIO_OUTPUT")
INBOUND_PASSTHROUGH_SOURCE = "127.0.0.6/32"
LOCALHOST = "127.0.0.1/32"


def nat_rules(options: CaptureOptions) -> list[str]:
    """meshd's rules for the nat table, as `iptables-restore` rule lines (no table header, no COMMIT)."""
    rules = [f":{chain} - [0:0]" for chain in CHAINS]
    rules.append(f"-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports {options.outbound_port}")
    rules.append(f"-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports {options.inbound_port}")
    rules += _inbound(options)
    rules += _outbound(options)
    return rules


def _inbound(options: CaptureOptions) -> list[str]:
    if options.include_inbound_ports == ():
        return []  # nothing captured inbound: no jump from PREROUTING at all
    rules = ["-A PREROUTING -p tcp -j ISTIO_INBOUND"]
    skipped = sorted({*PROXY_PORTS, options.inbound_port, options.outbound_port, *options.exclude_inbound_ports})
    if options.include_inbound_ports is None:
        rules += [f"-A ISTIO_INBOUND -p tcp --dport {port} -j RETURN" for port in skipped]
        rules.append("-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT")
    else:
        included = [port for port in options.include_inbound_ports if port not in skipped]
        rules += [f"-A ISTIO_INBOUND -p tcp --dport {port} -j ISTIO_IN_REDIRECT" for port in included]
    return rules


def _outbound(options: CaptureOptions) -> list[str]:
    rules = ["-A OUTPUT -p tcp -j ISTIO_OUTPUT"]
    rules += [f"-A ISTIO_OUTPUT -p tcp --dport {port} -j RETURN" for port in options.exclude_outbound_ports]
    # Envoy's inbound passthrough connects from 127.0.0.6 to the app: never capture it.
    rules.append(f"-A ISTIO_OUTPUT -s {INBOUND_PASSTHROUGH_SOURCE} -o lo -j RETURN")
    for match, owner in (("--uid-owner", options.proxy_uid), ("--gid-owner", options.proxy_gid)):
        # The proxy calling this pod's own IP (an app calling itself through its service) is inbound traffic:
        # ISTIO_INBOUND's port rules apply (so Envoy's own ports and the inbound exclusions stay untouched; where
        # it RETURNs, the proxy's RETURN below ends it). Istio jumps to ISTIO_IN_REDIRECT directly here.
        rules.append(f"-A ISTIO_OUTPUT ! -d {LOCALHOST} -o lo -m owner {match} {owner} -j ISTIO_INBOUND")
        # Anyone else on loopback is left alone; the proxy's own traffic is never captured (no loop).
        rules.append(f"-A ISTIO_OUTPUT -o lo -m owner ! {match} {owner} -j RETURN")
        rules.append(f"-A ISTIO_OUTPUT -m owner {match} {owner} -j RETURN")
    rules.append(f"-A ISTIO_OUTPUT -d {LOCALHOST} -j RETURN")
    rules += [f"-A ISTIO_OUTPUT -d {cidr} -j RETURN" for cidr in options.exclude_outbound_ranges]
    if options.include_outbound_ranges is None:
        rules.append("-A ISTIO_OUTPUT -j ISTIO_REDIRECT")
    else:
        rules += [f"-A ISTIO_OUTPUT -d {cidr} -j ISTIO_REDIRECT" for cidr in options.include_outbound_ranges]
    return rules


def render(options: CaptureOptions) -> str:
    """The whole nat table section as `--dry-run` prints it."""
    return "\n".join(["*nat", *nat_rules(options), "COMMIT", ""])
