"""Property tests (Hypothesis) of the xDS stream state machine (xds/stream.py): any sequence of requests
a client may send (known and unknown type URLs, any names, current, stale or invented nonces, ACKs and
NACKs, delta subscriptions) interleaved with config changes never raises, and what is sent keeps the
protocol's invariants: unique nonces, only subscribed and never refused types, only resources of the
snapshot, and the same snapshot computed again sends nothing more."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from hypothesis import given
from hypothesis import strategies as st

from meshd.xds.resource import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, Snapshot, XdsResource, make_resource
from meshd.xds.stream import DeltaStream, Request, Response, SotwStream
from tests.properties import budget

TYPES = [CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, "type.googleapis.com/unknown.Type", ""]
NAMES = ["a", "b", "c", "*", ""]


def _resource(type_url: str, name: str, tag: int) -> XdsResource:
    if type_url == CLUSTER:
        return make_resource(name, cluster_pb2.Cluster(name=name, alt_stat_name=f"t{tag}"))
    if type_url == LISTENER:
        return make_resource(name, listener_pb2.Listener(name=name, stat_prefix=f"t{tag}"))
    return make_resource(name, route_pb2.RouteConfiguration(name=name, internal_only_headers=[f"t{tag}"]))


def _snapshot(content: dict[str, dict[str, int]]) -> Snapshot:
    return Snapshot(
        resources={t: {n: _resource(t, n, tag) for n, tag in named.items()} for t, named in content.items()}
    )


snapshots = st.dictionaries(
    st.sampled_from([CLUSTER, LISTENER, ROUTE]), st.dictionaries(st.sampled_from(NAMES[:3]), st.integers(0, 2))
).map(_snapshot)


@dataclass(frozen=True)
class Ask:
    type_url: str
    names: tuple[str, ...]
    unsubscribe: tuple[str, ...]
    nonce: str  # "last" (the last nonce sent for this type), "old", "" or an invented one
    nack: bool


asks = st.builds(
    Ask,
    type_url=st.sampled_from(TYPES),
    names=st.lists(st.sampled_from(NAMES), max_size=3).map(tuple),
    unsubscribe=st.lists(st.sampled_from(NAMES), max_size=2).map(tuple),
    nonce=st.sampled_from(["last", "last", "old", "", "invented-1"]),
    nack=st.booleans(),
)
actions = st.lists(st.one_of(asks, snapshots), min_size=1, max_size=25)


def _nonce(ask: Ask, sent: dict[str, list[str]]) -> str:
    history = sent.get(ask.type_url, [])
    if ask.nonce == "last":
        return history[-1] if history else ""
    if ask.nonce == "old":
        return history[0] if history else "x-0"
    return ask.nonce


def _run(stream: SotwStream | DeltaStream, steps: list[Any], *, delta: bool) -> None:
    snapshot = _snapshot({})
    sent: dict[str, list[str]] = {}
    nonces: set[str] = set()
    for step in steps:
        if isinstance(step, Snapshot):
            snapshot = step
        else:
            nonce = _nonce(step, sent)
            request = Request(
                type_url=step.type_url,
                response_nonce=nonce,
                resource_names=() if delta else step.names,
                subscribe=step.names if delta else (),
                unsubscribe=step.unsubscribe if delta else (),
                error_detail="rejected" if step.nack and nonce else None,
            )
            outcome = stream.on_request(request)
            assert outcome.type_url == step.type_url
            assert outcome.kind in {"initial", "ack", "nack", "stale", "subscribe", "refused"}
            assert (outcome.kind == "refused") == (step.type_url in stream.refused)
        responses: list[Response] = stream.responses(snapshot)
        for response in responses:
            assert response.nonce not in nonces  # unique on the stream
            nonces.add(response.nonce)
            sent.setdefault(response.type_url, []).append(response.nonce)
            assert response.type_url not in stream.refused
            assert stream.state(response.type_url).subscribed
            held = {r.name: r for r in snapshot.select(response.type_url, None)}
            assert all(held.get(r.name) is r for r in response.resources)
        assert stream.responses(snapshot) == []  # nothing changed since: nothing more to send


@budget(150)
@given(actions)
def test_sotw_stream_keeps_the_protocol_on_any_request_sequence(steps: list[Any]) -> None:
    _run(SotwStream(nonce_prefix="p", refused=frozenset({SECRET})), steps, delta=False)


@budget(150)
@given(actions)
def test_delta_stream_keeps_the_protocol_on_any_request_sequence(steps: list[Any]) -> None:
    _run(DeltaStream(nonce_prefix="p", refused=frozenset({SECRET})), steps, delta=True)
