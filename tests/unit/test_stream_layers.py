"""SotW endpoints and routes sent from the layers that changed (Snapshot.changed_names): a stream served
layered snapshots (a layer kept from one push to the next is the same object, as the generator shares
them) sends exactly what a stream served the same content as flat snapshots sends, push after push, and
what the client then holds is the snapshot's version of every subscribed name."""

from __future__ import annotations

from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.route.v3 import route_pb2
from hypothesis import given
from hypothesis import strategies as st

from meshd.xds.resource import CLUSTER, ENDPOINT, ROUTE, Snapshot, XdsResource, make_resource
from meshd.xds.stream import DeltaStream, Request, Response, SotwStream
from tests.properties import budget

NAMES = ("a", "b", "c", "d")
_POOL: dict[tuple[str, str, int, int], XdsResource] = {}


def _resource(type_url: str, name: str, tag: int, copy: int) -> XdsResource:
    """The same object for the same (name, tag, copy); another copy is equal content in another object."""
    key = (type_url, name, tag, copy)
    if key not in _POOL:
        if type_url == CLUSTER:
            message: Any = cluster_pb2.Cluster(name=name, alt_stat_name=f"t{tag}")
        elif type_url == ENDPOINT:
            message = endpoint_pb2.ClusterLoadAssignment(
                cluster_name=name,
                policy=endpoint_pb2.ClusterLoadAssignment.Policy(overprovisioning_factor={"value": 100 + tag}),
            )
        else:
            message = route_pb2.RouteConfiguration(name=name, internal_only_headers=[f"t{tag}"])
        _POOL[key] = make_resource(name, message)
    return _POOL[key]


# a layer: per type, name -> (tag, copy); None in a step keeps the previous push's layer object
layer_content = st.dictionaries(
    st.sampled_from([ENDPOINT, ROUTE]),
    st.dictionaries(st.sampled_from(NAMES), st.tuples(st.integers(0, 2), st.integers(0, 1))),
)
steps = st.lists(
    st.tuples(
        st.none() | layer_content,
        st.none() | layer_content,
        st.none() | st.lists(st.sampled_from(NAMES), max_size=4).map(tuple),  # a new subscription
        st.booleans(),  # the previous snapshot is still held (by the generator, a generation back)
    ),
    min_size=1,
    max_size=12,
)


def _layer(content: dict[str, dict[str, tuple[int, int]]]) -> Snapshot:
    return Snapshot(
        resources={t: {n: _resource(t, n, *tag) for n, tag in named.items()} for t, named in content.items()}
    )


def _summary(responses: list[Response]) -> list[tuple[str, list[tuple[str, str]]]]:
    """What a response carries (its version is opaque: a stack's combines its layers' versions)."""
    return [(r.type_url, [(x.name, x.version) for x in r.resources]) for r in responses]


def _ack(stream: SotwStream, responses: list[Response], names: dict[str, tuple[str, ...]]) -> None:
    """Envoy's answer to each response: an ACK naming what it subscribes now (a changed subscription is
    told with the ACK, or with a request echoing the last nonce when nothing was sent)."""
    for type_url, state in stream.types.items():
        sent = [r for r in responses if r.type_url == type_url]
        nonce, version = (
            (sent[-1].nonce, sent[-1].version) if sent else (state.sent_nonce or "", state.sent_version or "")
        )
        if sent or frozenset(names[type_url]) != state.names:
            stream.on_request(
                Request(type_url=type_url, version_info=version, response_nonce=nonce, resource_names=names[type_url])
            )


@budget(150)
@given(steps, st.lists(st.sampled_from(NAMES), min_size=1, max_size=4).map(tuple))
def test_layered_snapshots_send_what_flat_ones_send(plan: list[Any], initial: tuple[str, ...]) -> None:
    layered, flat = SotwStream(nonce_prefix="l"), SotwStream(nonce_prefix="f")
    names = {ENDPOINT: initial, ROUTE: initial}
    for stream in (layered, flat):
        for type_url in (ENDPOINT, ROUTE):
            stream.on_request(Request(type_url=type_url, resource_names=initial))
    layers = (_layer({}), _layer({}))
    holds: dict[tuple[str, str], str] = {}  # what the client holds: (type, name) -> version
    snapshot = Snapshot(layers=layers)
    kept: list[Snapshot] = []
    for first, second, subscription, held in plan:
        layers = (layers[0] if first is None else _layer(first), layers[1] if second is None else _layer(second))
        # a basis no longer held anywhere is gone (weakly referenced): the stream falls back to comparing all
        kept[:] = [snapshot] if held else []
        snapshot = Snapshot(layers=layers)
        sent_layered, sent_flat = layered.responses(snapshot), flat.responses(Snapshot(resources=snapshot.resources))
        assert _summary(sent_layered) == _summary(sent_flat)
        for response in sent_layered:
            holds.update({(response.type_url, r.name): r.version for r in response.resources})
        for type_url in (ENDPOINT, ROUTE):
            for name in names[type_url]:
                resource = snapshot.get(type_url, name)
                assert resource is None or holds.get((type_url, name)) == resource.version, (type_url, name)
        if subscription is not None:
            names[ENDPOINT] = subscription
        _ack(layered, sent_layered, names)
        _ack(flat, sent_flat, names)


def test_an_endpoint_change_sends_only_the_changed_assignment_and_reads_only_the_changed_layer() -> None:
    subscribed = tuple(f"e{i}" for i in range(50))
    shared = Snapshot(resources={ENDPOINT: {n: _resource(ENDPOINT, n, 0, 0) for n in subscribed}})
    own = Snapshot(resources={ROUTE: {"r": _resource(ROUTE, "r", 0, 0)}})
    stream = SotwStream(nonce_prefix="s")
    stream.on_request(Request(type_url=ENDPOINT, resource_names=subscribed))
    first = Snapshot(layers=(shared, own))
    [response] = stream.responses(first)
    assert len(response.resources) == 50
    _ack(stream, [response], {ENDPOINT: subscribed})
    changed = Snapshot(resources={ENDPOINT: {**shared.resources[ENDPOINT], "e7": _resource(ENDPOINT, "e7", 1, 0)}})
    second = Snapshot(layers=(changed, own))
    assert second.changed_names(first, ENDPOINT) == {"e7"}
    assert second.changed_names(first, ROUTE) == frozenset()
    [response] = stream.responses(second)
    assert [r.name for r in response.resources] == ["e7"]


def _delta_summary(responses: list[Response]) -> list[tuple[str, list[tuple[str, str]], tuple[str, ...]]]:
    return [(r.type_url, [(x.name, x.version) for x in r.resources], r.removed) for r in responses]


@budget(150)
@given(
    steps,
    st.lists(st.sampled_from(NAMES), min_size=1, max_size=4).map(tuple),
    st.booleans(),  # clusters (wildcard) or endpoints by name
)
def test_delta_layered_snapshots_send_what_flat_ones_send(
    plan: list[Any], initial: tuple[str, ...], wildcard: bool
) -> None:
    type_url = CLUSTER if wildcard else ENDPOINT
    layered, flat = DeltaStream(nonce_prefix="l"), DeltaStream(nonce_prefix="f")
    subscribed = () if wildcard else initial
    for stream in (layered, flat):
        stream.on_request(Request(type_url=type_url, subscribe=subscribed))
    layers = (_layer({}), _layer({}))
    holds: dict[str, str] = {}  # what the client holds: name -> version
    snapshot = Snapshot(layers=layers)
    kept: list[Snapshot] = []
    names = set(subscribed)
    for first, second, subscription, held in plan:
        layers = (
            layers[0] if first is None else _layer(_as(type_url, first)),
            layers[1] if second is None else _layer(_as(type_url, second)),
        )
        kept[:] = [snapshot] if held else []
        snapshot = Snapshot(layers=layers)
        sent_layered, sent_flat = layered.responses(snapshot), flat.responses(Snapshot(resources=snapshot.resources))
        assert _delta_summary(sent_layered) == _delta_summary(sent_flat)
        for response in sent_layered:
            holds.update({r.name: r.version for r in response.resources})
            for name in response.removed:
                holds.pop(name, None)
        present = snapshot.of_type(type_url)
        wanted = set(present) if wildcard else names & set(present)
        assert {n: holds.get(n) for n in wanted} == {n: present[n].version for n in wanted}
        for stream, sent in ((layered, sent_layered), (flat, sent_flat)):
            for response in sent:
                stream.on_request(Request(type_url=type_url, response_nonce=response.nonce))
        if subscription is not None and not wildcard:
            more, fewer = set(subscription) - names, names - set(subscription)
            names = set(subscription)
            for stream in (layered, flat):
                stream.on_request(
                    Request(type_url=type_url, subscribe=tuple(sorted(more)), unsubscribe=tuple(sorted(fewer)))
                )
            for name in fewer:
                holds.pop(name, None)


def _as(type_url: str, content: dict[str, dict[str, tuple[int, int]]]) -> dict[str, dict[str, tuple[int, int]]]:
    """A layer's endpoints as resources of the tested type (clusters for the wildcard case)."""
    return {type_url: content.get(ENDPOINT, {})}


def test_delta_endpoints_of_an_updated_cluster_are_sent_again_though_unchanged() -> None:
    """Envoy warms an updated cluster again and waits for its endpoints: they are re-sent even when the
    endpoint layer did not change (the stream forgets what it knew of them)."""
    endpoints = Snapshot(resources={ENDPOINT: {"a": _resource(ENDPOINT, "a", 0, 0)}})
    stream = DeltaStream(nonce_prefix="d")
    stream.on_request(Request(type_url=CLUSTER))
    stream.on_request(Request(type_url=ENDPOINT, subscribe=("a",)))
    first = Snapshot(layers=(Snapshot(resources={CLUSTER: {"a": _resource(CLUSTER, "a", 0, 0)}}), endpoints))
    for response in stream.responses(first):
        stream.on_request(Request(type_url=response.type_url, response_nonce=response.nonce))
    second = Snapshot(layers=(Snapshot(resources={CLUSTER: {"a": _resource(CLUSTER, "a", 1, 0)}}), endpoints))
    sent = {r.type_url: [x.name for x in r.resources] for r in stream.responses(second)}
    assert sent == {CLUSTER: ["a"], ENDPOINT: ["a"]}
