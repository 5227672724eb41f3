"""A SotW request's names recognised from its bytes (xds/fingerprint.py): requests laid out as Envoy
writes them (protobuf's field order) get a fingerprint that is equal exactly when node and names are;
an ACK with the fingerprint of the last request is given that request's very tuple of names."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2
from hypothesis import given
from hypothesis import strategies as st

from meshd.xds.fingerprint import Received, message_of, names_fingerprint
from meshd.xds.resource import ENDPOINT, Snapshot, make_resource
from meshd.xds.server import _sotw_parser, _sotw_request
from meshd.xds.stream import Request, SotwStream

NAMES = [f"outbound|9080||svc-{i}.ns-{i % 7}.svc.cluster.local" for i in range(40)]


def _bytes(names: list[str], *, version: str = "", nonce: str = "", node: str | None = None, error: str = "") -> bytes:
    req = discovery_pb2.DiscoveryRequest(
        version_info=version, resource_names=names, type_url=ENDPOINT, response_nonce=nonce
    )
    if node is not None:
        req.node.CopyFrom(base_pb2.Node(id=node))
    if error:
        req.error_detail.message = error
    data: bytes = req.SerializeToString()
    return data


def _key(data: bytes) -> tuple[int, int] | None:
    req = discovery_pb2.DiscoveryRequest.FromString(data)
    return names_fingerprint(data, version=req.version_info, type_url=req.type_url, nonce=req.response_nonce)


names_lists = st.lists(st.sampled_from(NAMES), max_size=12)
texts = st.text(alphabet="abc-0123456789", max_size=12)


@given(a=names_lists, b=names_lists, va=texts, vb=texts, na=texts, nb=texts)
def test_equal_names_have_equal_fingerprints_whatever_the_version_and_nonce(
    a: list[str], b: list[str], va: str, vb: str, na: str, nb: str
) -> None:
    ka, kb = _key(_bytes(a, version=va, nonce=na)), _key(_bytes(b, version=vb, nonce=nb))
    assert ka is not None and kb is not None  # protobuf writes the fields in order, as Envoy does
    assert (ka == kb) == (a == b)


def test_the_first_request_with_its_node_differs_from_the_acks_that_follow() -> None:
    first = _key(_bytes(NAMES, node="sidecar~10.0.0.1~a.ns~ns.svc.cluster.local"))
    ack1, ack2 = _key(_bytes(NAMES, version="v1", nonce="n-1")), _key(_bytes(NAMES, version="v2", nonce="n-2"))
    assert first != ack1 and ack1 == ack2


def test_a_nack_or_bytes_in_another_order_have_none() -> None:
    assert _key(_bytes(NAMES, version="v1", nonce="n-1", error="bad cluster")) is None
    ordered = _bytes(NAMES[:2], version="v1", nonce="n-1")
    # the same fields, the nonce written before the names: still a valid request, read the slow way
    swapped = _bytes([], nonce="n-1") + _bytes(NAMES[:2], version="v1")
    assert discovery_pb2.DiscoveryRequest.FromString(swapped) == discovery_pb2.DiscoveryRequest.FromString(ordered)
    assert _key(ordered) is not None and _key(swapped) is None


def _request(data: bytes, stream: SotwStream) -> Request:
    """As the server reads a request: its deserializer, then the Request the stream is given."""
    received = _sotw_parser(data)
    assert isinstance(received, Received)
    return _sotw_request(received.message, received.names_key, stream)


def test_an_ack_of_the_same_names_is_given_the_last_tuple_and_a_changed_list_is_read() -> None:
    stream = SotwStream(nonce_prefix="t")
    snap = Snapshot(
        resources={ENDPOINT: {n: make_resource(n, endpoint_pb2.ClusterLoadAssignment(cluster_name=n)) for n in NAMES}}
    )
    first = _request(_bytes(NAMES[:3], node="sidecar~10.0.0.1~a.ns~ns.svc.cluster.local"), stream)
    stream.on_request(first)
    (resp,) = stream.responses(snap)
    ack = _request(_bytes(NAMES[:3], version=resp.version, nonce=resp.nonce), stream)
    assert ack.resource_names == first.resource_names and ack.resource_names is not first.resource_names
    assert stream.on_request(ack).kind == "ack" and stream.responses(snap) == []
    again = _request(_bytes(NAMES[:3], version=resp.version, nonce=resp.nonce), stream)
    assert again.resource_names is ack.resource_names  # not read: the fingerprint matched
    stream.on_request(again)
    changed = _request(_bytes([*NAMES[:2], NAMES[3]], version=resp.version, nonce=resp.nonce), stream)
    assert changed.resource_names == (*NAMES[:2], NAMES[3])
    stream.on_request(changed)
    (resp2,) = stream.responses(snap)
    assert NAMES[3] in {r.name for r in resp2.resources}


def test_the_inbox_item_unwraps_to_the_message() -> None:
    msg = discovery_pb2.DiscoveryRequest(type_url=ENDPOINT)
    assert message_of(Received(msg, None)) is msg and message_of(msg) is msg


def test_a_buffer_that_cannot_be_fingerprinted_is_still_parsed_and_its_names_read() -> None:
    """The deserializer never fails on the fingerprint: a writable buffer cannot be hashed, so it has none."""
    data = _bytes(NAMES[:2], version="v1", nonce="n-1")
    received = _sotw_parser(bytearray(data))  # type: ignore[arg-type]
    assert isinstance(received, Received) and received.names_key is None
    assert _sotw_request(received.message, None, SotwStream(nonce_prefix="t")).resource_names == tuple(NAMES[:2])
