"""Merge meshd's rules into a saved nat table, replacing any earlier meshd rules (so re-running is idempotent)
and keeping every other rule. Pure: `iptables-save -t nat` text in, `iptables-restore` text out."""

from __future__ import annotations

from meshd.capture.rules import CHAINS


def merge_nat(saved: str, ours: list[str]) -> str:
    """The nat table of `saved` without any ISTIO_* chain or jump to one, plus `ours`, ready for iptables-restore."""
    kept: list[str] = []
    in_nat = False
    for line in saved.splitlines():
        stripped = line.strip()
        if stripped.startswith("*"):
            in_nat = stripped == "*nat"
            continue
        if not in_nat or not stripped or stripped.startswith("#") or stripped == "COMMIT":
            continue
        if _mentions_ours(stripped):
            continue
        kept.append(stripped)
    builtins = [line for line in kept if line.startswith(":")]
    if not builtins:
        builtins = [f":{chain} ACCEPT [0:0]" for chain in ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")]
    rules = [line for line in kept if not line.startswith(":")]
    our_chains = [line for line in ours if line.startswith(":")]
    our_rules = [line for line in ours if not line.startswith(":")]
    return "\n".join(["*nat", *builtins, *our_chains, *rules, *our_rules, "COMMIT", ""])


def _mentions_ours(line: str) -> bool:
    words = line.replace(":", " ").split()
    return any(chain in words for chain in CHAINS)
