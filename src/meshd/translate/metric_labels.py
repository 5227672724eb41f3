"""Istio's 21 metric labels in few bytes of Envoy config, and back.

Envoy's stats access logger (`translate/metrics.py`) names every tag of every stat, and Istio's standard
metrics give each of four to six stats per connection manager the same 21 labels: written out, they were
more than half of what a sidecar is sent. Envoy is therefore given **compact tags**, and the node agent's
scrape endpoints (15090, 15020) give Prometheus Istio's labels again (`expand_text`):

- **a group** of labels filled from one place is one tag whose value packs them, `|`-separated:
  - `_is` / `_id`: a workload's identity as `source_*` / `destination_*` labels (workload, workload_namespace,
    app, version, cluster, in that order). Its own from the environment variable `MESHD_PEER_ID` the agent
    sets; the peer's from the packed value the peer exchange carries (one header, one PROXY TLV, one
    endpoint metadata key).
  - `_sv`: destination_service, destination_service_name, destination_service_namespace, from the
    `meshd.service` metadata of the cluster or the inbound route (key `id`).
  - A group whose labels the Telemetry API removed in part names the ones kept: `_is_wnv` (letters below).
  - A packed value that is `unknown`, `-` (Envoy's "no value") or short gives `unknown` for what is missing.
- **single labels** get short names (`_sp`: source_principal ...); principals that Envoy reports as `-`
  (no TLS) become `unknown`, as Istio reports them.
- `reporter`, and any tag a Telemetry override upserts, keep their names.

`compact` turns Istio-named tags (as `standard_tags` and the overrides leave them) into Envoy's; `decompact`
is its inverse (re-tagging a stat); `expand_text` is what Prometheus sees. Group members' formats are
written `GROUP + <packed format>` before compaction, so an override that upserts a standard label replaces
it with an ordinary tag.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

SEPARATOR = "|"
UNKNOWN = "unknown"
GROUP = "\x00"  # prefix of a group member's format before compaction
NO_VALUE = "-"  # Envoy's format result for a value that is not there

IDENTITY_FIELDS = ("workload", "namespace", "app", "version", "cluster")
_IDENTITY_LABELS = ("workload", "workload_namespace", "app", "version", "cluster")
_SERVICE_LABELS = ("destination_service", "destination_service_name", "destination_service_namespace")


def _group(tag: str, labels: Iterable[str], letters: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return tag, tuple(zip(labels, letters, strict=True))


# compact tag -> its labels, in packed order, each with its letter
GROUPS: dict[str, tuple[tuple[str, str], ...]] = dict(
    [
        _group("_is", (f"source_{label}" for label in _IDENTITY_LABELS), "wnavc"),
        _group("_id", (f"destination_{label}" for label in _IDENTITY_LABELS), "wnavc"),
        _group("_sv", _SERVICE_LABELS, "hns"),
    ]
)
SINGLE = {
    "_sp": "source_principal",
    "_dp": "destination_principal",
    "_rp": "request_protocol",
    "_rc": "response_code",
    "_gs": "grpc_response_status",
    "_rf": "response_flags",
    "_cs": "connection_security_policy",
}
_PRINCIPALS = {"source_principal", "destination_principal"}
_GROUP_OF = {label: (tag, letter) for tag, members in GROUPS.items() for label, letter in members}
_SHORT = {label: tag for tag, label in SINGLE.items()}


def pack(values: Iterable[str]) -> str:
    """Values of one group, in its order, as one tag value."""
    return SEPARATOR.join(values)


def group_label(label: str, packed_format: str) -> tuple[str, str]:
    """A group member before compaction: `label`, filled from `packed_format` (the group's packed value)."""
    return label, GROUP + packed_format


def compact(tags: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Envoy's tags for Istio-named `tags`: group members into their group's tag (named with the letters
    kept when not all are), standard single labels renamed, everything else as it is."""
    out: list[tuple[str, str]] = []
    groups: dict[str, tuple[str, list[str]]] = {}
    for name, value in tags:
        if value.startswith(GROUP) and name in _GROUP_OF:
            tag, letter = _GROUP_OF[name]
            if tag not in groups:
                groups[tag] = (value[len(GROUP) :], [])
                out.append((tag, ""))  # its place; filled below
            groups[tag][1].append(letter)
        elif name in _SHORT and not value.startswith(GROUP):
            out.append((_SHORT[name], value))
        else:
            out.append((name, value))
    result = []
    for name, value in out:
        if name in groups:
            packed, letters = groups[name]
            every = "".join(letter for _, letter in GROUPS[name])
            kept = "".join(letter for letter in every if letter in letters)
            result.append((name if kept == every else f"{name}_{kept}", packed))
        else:
            result.append((name, value))
    return result


def _split_tag(name: str) -> tuple[str, str] | None:
    """A group tag's (group tag, letters of the labels kept), or None."""
    if not name.startswith("_"):
        return None
    base, named, letters = name[1:].partition("_")
    members = GROUPS.get(f"_{base}")
    if members is None:
        return None
    every = "".join(letter for _, letter in members)
    if not named:
        return f"_{base}", every
    if not letters or any(letter not in every for letter in letters):
        return None
    return f"_{base}", letters


def decompact(tags: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """`compact`'s inverse: Istio-named tags, group members again marked as such."""
    out: list[tuple[str, str]] = []
    for name, value in tags:
        group = _split_tag(name)
        if group is not None:
            base, letters = group
            out += [group_label(label, value) for label, letter in GROUPS[base] if letter in letters]
        else:
            out.append((SINGLE.get(name, name), value))
    return out


def expand_label(name: str, value: str) -> list[tuple[str, str]]:
    """Istio's labels for one label of Envoy's Prometheus output (values as Envoy escaped them)."""
    group = _split_tag(name)
    if group is not None:
        base, letters = group
        members = GROUPS[base]
        parts = [] if value in (UNKNOWN, NO_VALUE, "") else value.split(SEPARATOR, len(members) - 1)
        parts += [UNKNOWN] * (len(members) - len(parts))
        return [
            (label, part or UNKNOWN) for (label, letter), part in zip(members, parts, strict=True) if letter in letters
        ]
    label = SINGLE.get(name)
    if label is None:
        return [(name, value)]
    return [(label, UNKNOWN if label in _PRINCIPALS and value in (NO_VALUE, "") else value)]


_SERIES = re.compile(r"^(istio_[A-Za-z0-9_:]*)\{(.*)\}(.*)$")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')
_LE = re.compile(r',?le="[^"]*"$')


def expand_text(text: str) -> str:
    """Prometheus text (Istio's names already, `istio_*`) with every `istio_*` series' compact labels
    expanded into Istio's; other lines as they are."""
    memo: dict[str, str] = {}
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if not line.startswith("istio_"):
            continue
        match = _SERIES.match(line)
        if match is None:
            continue
        labels = match.group(2)
        le = _LE.search(labels)
        head = labels[: le.start()] if le else labels
        expanded = memo.get(head)
        if expanded is None:
            pairs = [pair for n, v in _LABEL.findall(head) for pair in expand_label(n, v)]
            expanded = memo[head] = ",".join(f'{n}="{v}"' for n, v in pairs)
        tail = le.group(0).lstrip(",") if le else ""
        joined = f"{expanded},{tail}" if expanded and tail else expanded or tail
        lines[i] = f"{match.group(1)}{{{joined}}}{match.group(3)}"
    return "\n".join(lines)
