"""EnvoyFilter `applyTo: BOOTSTRAP` (pure): which patches reach a proxy's bootstrap, how they travel to its
node agent and how they apply.

meshd does not write the bootstrap: the node agent (`meshd agent`) does. So meshd serves a proxy its BOOTSTRAP
patches and the agent applies them before it starts Envoy (Istio: with BOOTSTRAP_XDS_AGENT, pilot-agent asks
istiod's bootstrap generator for the bootstrap, patched, before it starts Envoy).

- Which: the EnvoyFilters that select the proxy, in Istio's order (selection.py: root namespace, then the
  proxy's; priority); of each, the BOOTSTRAP patches whose `match.proxy` (proxyVersion, metadata) matches
  the node and whose `match.context` fits the proxy: ANY; GATEWAY for a router; SIDECAR_INBOUND or
  SIDECAR_OUTBOUND for a sidecar. (Istio's bootstrap generator does not read the context; meshd gives it
  the meaning it has for the other patches.)
- How they travel: resources of type `BOOTSTRAP_PATCH` on the proxy's ADS stream, one per patch, named
  `<filter order>/<namespace>/<name>/<patch index>` (the order among the filters with a patch here), each
  the patch value as an envoy.config.bootstrap.v3.Bootstrap. The agent asks with the node it gives Envoy, whose metadata
  `MESHD_BOOTSTRAP_PATCHES: "true"` says that it applies them; a proxy without that mark gets none and the
  patches selecting it are reported (they cannot reach its bootstrap). Envoy never subscribes to the type.
- How they apply (`apply_patches`): MERGE is protobuf's merge, as Istio's proto.Merge on the Bootstrap: a
  set scalar overwrites, repeated fields append, map entries (node.metadata's keys) are added or replaced
  by key, messages merge field by field (a Duration too: `5s` merged into `0.25s` gives 5.25 s, as in
  Istio). Filter by filter, all or nothing: a filter whose patched bootstrap breaks a rule of Envoy's protos
  (PGV, translate/proto_guard.py) is left out, with an error naming it and its patches; the others apply.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap
from google.protobuf.message import DecodeError

from meshd.api.envoyfilter import ConfigPatch, EnvoyFilter
from meshd.translate.envoyfilter import match as m
from meshd.translate.proto_guard import violations

BOOTSTRAP_PATCH = "meshd.io/envoyfilter/bootstrap-patch"
AGENT_METADATA = "MESHD_BOOTSTRAP_PATCHES"  # node metadata of a proxy whose agent applies bootstrap patches
MAX_SHOWN = 3


@dataclass(frozen=True)
class Selected:
    """A BOOTSTRAP patch that applies to a proxy: its EnvoyFilter, its place there, its resource name."""

    envoy_filter: EnvoyFilter
    index: int
    patch: ConfigPatch
    resource: str


@dataclass(frozen=True)
class Refusal:
    """An EnvoyFilter whose bootstrap patches were left out: `namespace/name`, the resources, why."""

    envoy_filter: str
    resources: tuple[str, ...]
    message: str


def context_fits(wanted: str, *, router: bool) -> bool:
    if wanted == "ANY":
        return True
    return wanted == m.GATEWAY if router else wanted in (m.INBOUND, m.OUTBOUND)


def selected_patches(filters: Iterable[EnvoyFilter], *, router: bool, metadata: Mapping[str, str]) -> list[Selected]:
    """The BOOTSTRAP patches of these (selected, ordered) EnvoyFilters that apply to the proxy, in order."""
    out: list[Selected] = []
    order = 0  # counts the filters with a patch here
    for found in filters:
        meta = found.metadata
        chosen = [
            Selected(found, i, patch, resource_name(order=order, namespace=meta.namespace, name=meta.name, index=i))
            for i, patch in enumerate(found.spec.config_patches)
            if patch.apply_to == "BOOTSTRAP"
            and patch.message is not None
            and context_fits(patch.match.context, router=router)
            and m.proxy_ok(patch.match, metadata=metadata)
        ]
        order += bool(chosen)
        out += chosen
    return out


def resource_name(*, order: int, namespace: str, name: str, index: int) -> str:
    return f"{order}/{namespace}/{name}/{index}"


def parse_name(resource: str) -> tuple[int, str, str, int] | None:
    """(filter order, namespace, name, patch index) of a resource name; None if it is not one."""
    parts = resource.split("/")
    if len(parts) != 4 or not parts[0].isdigit() or not parts[3].isdigit() or not parts[1] or not parts[2]:
        return None
    return int(parts[0]), parts[1], parts[2], int(parts[3])


def decode(resources: Mapping[str, bytes]) -> tuple[list[tuple[str, Bootstrap]], list[str]]:
    """The patches of a response (resource name -> serialised Bootstrap) in the order they apply, and the
    names that are not patches (a response meshd did not make)."""
    ordered: list[tuple[tuple[int, int], str, Bootstrap]] = []
    bad: list[str] = []
    for name, body in resources.items():
        parsed = parse_name(name)
        value = Bootstrap()
        try:
            value.ParseFromString(body)
        except DecodeError:
            parsed = None
        if parsed is None:
            bad.append(name)
            continue
        ordered.append(((parsed[0], parsed[3]), name, value))
    ordered.sort(key=lambda item: item[0])
    return [(name, value) for _, name, value in ordered], bad


def filter_of(resource: str) -> str:
    parsed = parse_name(resource)
    return f"{parsed[1]}/{parsed[2]}" if parsed is not None else resource


def apply_patches(base: Bootstrap, patches: Iterable[tuple[str, Bootstrap]]) -> tuple[Bootstrap, list[Refusal]]:
    """`base` with the patches merged in, filter by filter (consecutive patches of one filter together);
    a filter whose result breaks a PGV rule is left out and refused. `base` is not changed."""
    result = Bootstrap()
    result.CopyFrom(base)
    refusals: list[Refusal] = []
    groups: list[tuple[str, list[tuple[str, Bootstrap]]]] = []
    for name, value in patches:
        owner = name.rsplit("/", 1)[0]
        if not groups or groups[-1][0] != owner:
            groups.append((owner, []))
        groups[-1][1].append((name, value))
    for _, group in groups:
        trial = Bootstrap()
        trial.CopyFrom(result)
        for _, value in group:
            trial.MergeFrom(value)
        found = violations(trial)
        names = tuple(n for n, _ in group)
        if found:
            shown = "; ".join(found[:MAX_SHOWN])
            why = f"the patched bootstrap would be refused by Envoy: {shown}"
            refusals.append(Refusal(filter_of(names[0]), names, why))
            continue
        result = trial
    return result, refusals
