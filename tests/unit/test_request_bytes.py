"""A SotW ACK recognised from its bytes (xds/request_bytes.py). Requests laid out as Envoy writes them
(protobuf's field order) keep the bytes of their node and names, equal exactly when node and names are; a
request ending with a type's last nonce and holding the last request's names' bytes is that type's ACK,
read without parsing it, and is the very Request parsing would give; everything else is parsed."""

from __future__ import annotations

from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.xds.request_bytes import NamesBytes, Received, Unparsable, message_of, names_bytes, parse_sotw
from meshd.xds.resource import CLUSTER, ENDPOINT, Snapshot, make_resource
from meshd.xds.server import _read_sotw, _sotw_request
from meshd.xds.stream import Request, SotwStream

NAMES = [f"outbound|9080||svc-{i}.ns-{i % 7}.svc.cluster.local" for i in range(40)]
NODE = "sidecar~10.0.0.1~a.ns~ns.svc.cluster.local"


def _bytes(
    names: list[str], *, version: str = "", nonce: str = "", node: str | None = None, error: str = "",
    type_url: str = ENDPOINT,
) -> bytes:  # fmt: skip
    req = discovery_pb2.DiscoveryRequest(
        version_info=version, resource_names=names, type_url=type_url, response_nonce=nonce
    )
    if node is not None:
        req.node.CopyFrom(base_pb2.Node(id=node))
    if error:
        req.error_detail.message = error
    data: bytes = req.SerializeToString()
    return data


def _key(data: bytes) -> bytes | None:
    req = discovery_pb2.DiscoveryRequest.FromString(data)
    return names_bytes(
        data, version=req.version_info, type_url=req.type_url, nonce=req.response_nonce,
        nack=req.HasField("error_detail"),
    )  # fmt: skip


names_lists = st.lists(st.sampled_from(NAMES), max_size=12)
texts = st.text(alphabet="abc-0123456789", max_size=12)


@given(a=names_lists, b=names_lists, va=texts, vb=texts, na=texts, nb=texts)
def test_equal_names_have_equal_bytes_whatever_the_version_and_nonce(
    a: list[str], b: list[str], va: str, vb: str, na: str, nb: str
) -> None:
    ka, kb = _key(_bytes(a, version=va, nonce=na)), _key(_bytes(b, version=vb, nonce=nb))
    assert ka is not None and kb is not None  # protobuf writes the fields in order, as Envoy does
    assert (ka == kb) == (a == b)


def test_the_node_is_left_out_so_the_first_request_and_its_acks_have_the_same_names_bytes() -> None:
    """Envoy sends the node on a stream's first request (on every one without set_node_on_first_message_only):
    meshd reads it only when the stream opens, and what thousands of proxies keep is one shared object."""
    first = _key(_bytes(NAMES, node=NODE))
    other_node = _key(_bytes(NAMES, version="v1", nonce="n-1", node="sidecar~10.0.0.2~b.ns~ns.svc.cluster.local"))
    ack1, ack2 = _key(_bytes(NAMES, version="v1", nonce="n-1")), _key(_bytes(NAMES, version="v2", nonce="n-2"))
    assert first == ack1 == ack2 == other_node
    assert first is not None and NODE.encode() not in first


def test_a_nack_or_bytes_in_another_order_have_none() -> None:
    assert _key(_bytes(NAMES, version="v1", nonce="n-1", error="bad cluster")) is None
    ordered = _bytes(NAMES[:2], version="v1", nonce="n-1")
    # the same fields, the nonce written before the names: still a valid request, read the slow way
    swapped = _bytes([], nonce="n-1") + _bytes(NAMES[:2], version="v1")
    assert discovery_pb2.DiscoveryRequest.FromString(swapped) == discovery_pb2.DiscoveryRequest.FromString(ordered)
    assert _key(ordered) is not None and _key(swapped) is None


class Reader:
    """The server's read path for one SotW stream (`_serve_admitted`): recognised, or parsed and then made
    a Request; counts what was parsed."""

    def __init__(self, stream: SotwStream, intern: NamesBytes | None = None) -> None:
        self.stream, self.intern, self.parsed = stream, intern or NamesBytes(), 0

    def __call__(self, data: bytes) -> Request:
        got = _read_sotw(data, self.stream)
        if isinstance(got, Request):
            return got
        self.parsed += 1
        assert not isinstance(got, Unparsable), got
        return _sotw_request(got, data, self.stream, self.intern)


def _reference(data: bytes) -> Request:
    """What the request says, read in full by protobuf."""
    msg = discovery_pb2.DiscoveryRequest.FromString(data)
    return Request(
        type_url=msg.type_url,
        version_info=msg.version_info,
        response_nonce=msg.response_nonce,
        resource_names=tuple(msg.resource_names),
        error_detail=msg.error_detail.message if msg.HasField("error_detail") else None,
    )


def _fields(req: Request) -> tuple[Any, ...]:
    return req.type_url, req.version_info, req.response_nonce, req.resource_names, req.error_detail


def _snapshot(names: list[str]) -> Snapshot:
    eds = {n: make_resource(n, endpoint_pb2.ClusterLoadAssignment(cluster_name=n)) for n in names}
    return Snapshot(resources={ENDPOINT: eds})


def test_an_ack_of_the_same_names_is_recognised_and_given_the_last_tuple() -> None:
    stream = SotwStream(nonce_prefix="t")
    read = Reader(stream)
    snap = _snapshot(NAMES)
    first = read(_bytes(NAMES[:3], node=NODE))
    stream.on_request(first)
    (resp,) = stream.responses(snap)
    ack = read(_bytes(NAMES[:3], version=resp.version, nonce=resp.nonce))
    assert read.parsed == 1  # recognised: not parsed
    assert ack.resource_names is first.resource_names and ack.version_info == resp.version
    assert _fields(ack) == _fields(_reference(_bytes(NAMES[:3], version=resp.version, nonce=resp.nonce)))
    assert stream.on_request(ack).kind == "ack" and stream.responses(snap) == []
    # with the node in every request, as Envoy sends it without set_node_on_first_message_only
    again = read(_bytes(NAMES[:3], version=resp.version, nonce=resp.nonce, node=NODE))
    assert read.parsed == 1 and again.resource_names is first.resource_names
    assert stream.on_request(again).kind == "ack"
    changed = read(_bytes([*NAMES[:2], NAMES[3]], version=resp.version, nonce=resp.nonce))
    assert read.parsed == 2 and changed.resource_names == (*NAMES[:2], NAMES[3])
    stream.on_request(changed)
    (resp2,) = stream.responses(snap)
    assert NAMES[3] in {r.name for r in resp2.resources}


def test_a_stale_nonce_is_parsed_and_keeps_the_tuple_of_the_same_names() -> None:
    stream = SotwStream(nonce_prefix="t")
    read = Reader(stream)
    stream.on_request(read(_bytes(NAMES[:3])))
    (resp,) = stream.responses(_snapshot(NAMES))
    ack = read(_bytes(NAMES[:3], version=resp.version, nonce=resp.nonce))
    assert read.parsed == 1  # (the first request had no node: its ACK is recognised)
    stream.on_request(ack)
    stale = read(_bytes(NAMES[:3], version="old", nonce="t-0"))
    assert read.parsed == 2 and stale.resource_names is ack.resource_names
    assert stream.on_request(stale).kind == "stale"


def test_equal_names_bytes_are_one_object_across_streams_and_the_intern_is_bounded() -> None:
    intern = NamesBytes(limit_bytes=1000)
    keys = []
    for _ in range(3):
        stream = SotwStream(nonce_prefix="t")
        req = Reader(stream, intern)(_bytes(NAMES[:3], version="v", nonce="n"))
        keys.append(req.names_key)
    assert keys[0] is not None and keys[0] is keys[1] is keys[2]
    big = b"x" * 600
    held = intern(big)
    assert intern(b"y" * 600) is not None  # over the bound: starts again
    assert intern(bytes(bytearray(big))) is not held  # no longer held


# A second request on a stream holding one EDS and one CDS subscription, each answered once: any version
# (with multi-byte lengths and non-ASCII), the names of the last request or others, the current nonce of
# either type or a stale one, an error or none. Whatever it is, the read path gives what parsing gives.
versions = st.one_of(texts, st.text(min_size=120, max_size=300), st.sampled_from(["", "é-1", "v" * 200]))


@settings(max_examples=300, deadline=None)
@given(
    names=names_lists, other=names_lists, version=versions, same=st.booleans(),
    which=st.sampled_from(["eds", "cds", "stale"]), error=st.sampled_from(["", "bad cluster"]), node=st.booleans(),
)  # fmt: skip
def test_the_read_path_gives_what_parsing_gives(
    names: list[str], other: list[str], version: str, same: bool, which: str, error: str, node: bool
) -> None:
    stream = SotwStream(nonce_prefix="t")
    read = Reader(stream)
    stream.on_request(read(_bytes([], type_url=CLUSTER, node=NODE)))
    stream.on_request(read(_bytes(names, node=NODE)))
    snap = Snapshot(resources={**_snapshot(NAMES).resources, CLUSTER: {}})
    sent = {r.type_url: r for r in stream.responses(snap)}
    ack = read(_bytes(names, version=sent[ENDPOINT].version, nonce=sent[ENDPOINT].nonce))
    stream.on_request(ack)
    stream.on_request(read(_bytes([], type_url=CLUSTER, version=sent[CLUSTER].version, nonce=sent[CLUSTER].nonce)))
    parsed = read.parsed
    type_url = CLUSTER if which == "cds" else ENDPOINT
    nonce = {"eds": sent[ENDPOINT].nonce, "cds": sent[CLUSTER].nonce, "stale": "t-0"}[which]
    asked = names if same else other
    data = _bytes(asked, version=version, nonce=nonce, error=error, type_url=type_url, node=NODE if node else None)
    got = read(data)
    assert _fields(got) == _fields(_reference(data))
    # recognised (not parsed) exactly when it is the current ACK of the type's last names (CDS: none)
    recognised = read.parsed == parsed
    assert recognised == (not error and which != "stale" and asked == ([] if which == "cds" else names))


def test_bytes_protobuf_refuses_are_unparsable_and_a_debug_inbox_item_is_parsed() -> None:
    assert isinstance(_read_sotw(b"\x0a\xff", None), Unparsable)
    assert isinstance(parse_sotw(b"\x0a\x05ab"), Unparsable)
    msg = message_of(Received(_bytes(NAMES[:1], version="v")))
    assert list(msg.resource_names) == NAMES[:1] and message_of(msg) is msg


def test_an_ack_whose_version_is_not_utf8_is_left_to_the_parser_which_refuses_it() -> None:
    stream = SotwStream(nonce_prefix="t")
    read = Reader(stream)
    stream.on_request(read(_bytes(NAMES[:2])))
    (resp,) = stream.responses(_snapshot(NAMES))
    ack = _bytes(NAMES[:2], version="abc", nonce=resp.nonce)
    assert isinstance(_read_sotw(ack, stream), Request)
    bad = b"\x0a\x03\xff\xfe\xfd" + ack[5:]  # the same request, its version not UTF-8
    assert isinstance(_read_sotw(bad, stream), Unparsable)


def test_a_request_quoting_another_types_nonce_is_parsed() -> None:
    """The tail is the type and the nonce together: a type URL of the same length with the CDS nonce is not
    the CDS ACK (the bytes in between are the CDS request's)."""
    stream = SotwStream(nonce_prefix="t")
    read = Reader(stream)
    stream.on_request(read(_bytes([], type_url=CLUSTER)))
    (resp,) = stream.responses(Snapshot(resources={CLUSTER: {}}))
    other = CLUSTER[:-1] + "X"
    data = _bytes([], version=resp.version, nonce=resp.nonce, type_url=other)
    assert _fields(read(data)) == _fields(_reference(data)) and read.parsed == 2


def test_a_nacks_bytes_are_never_kept_wherever_its_error_is() -> None:
    """A NACK laid out with its error before its names (not as Envoy writes it): its bytes are not kept, so
    the same bytes again are parsed, and read as the NACK they are."""
    stream = SotwStream(nonce_prefix="t")
    read = Reader(stream)
    stream.on_request(read(_bytes(NAMES[:2])))
    (resp,) = stream.responses(_snapshot(NAMES))
    error = discovery_pb2.DiscoveryRequest(error_detail={"message": "bad"}).SerializeToString()
    head = _bytes([], version=resp.version)
    nack = head + error + _bytes(NAMES[:2], nonce=resp.nonce)
    first = read(nack)
    assert first.error_detail == "bad" and first.names_key is None
    assert read(nack).error_detail == "bad" and read.parsed == 3


def test_a_node_whose_length_runs_past_the_names_is_left_to_the_parser() -> None:
    stream = SotwStream(nonce_prefix="t")
    read = Reader(stream)
    stream.on_request(read(_bytes([])))
    (resp,) = stream.responses(_snapshot(NAMES))
    tail = _bytes([], nonce=resp.nonce)
    data = _bytes([], version="v") + b"\x12\x7f" + tail  # a node of 127 bytes, but only the tail follows
    assert _read_sotw(_bytes([], version="v") + tail, stream) is not None
    assert isinstance(_read_sotw(data, stream), Unparsable)


def test_an_ack_with_a_node_protobuf_refuses_is_left_to_the_parser() -> None:
    """The node is not compared, but it is parsed (at the depth it has in a request): metadata nested
    beyond protobuf's limit refuses the request, recognised or not."""
    stream = SotwStream(nonce_prefix="t")
    read = Reader(stream)
    stream.on_request(read(_bytes(NAMES[:2], node=NODE)))
    (resp,) = stream.responses(_snapshot(NAMES))
    deep = discovery_pb2.DiscoveryRequest(version_info=resp.version, resource_names=NAMES[:2], type_url=ENDPOINT)
    deep.response_nonce = resp.nonce
    deep.node.id = NODE
    value: dict[str, object] = {"k": "v"}
    for _ in range(60):
        value = {"x": value}
    deep.node.metadata.update(value)
    data = deep.SerializeToString()
    assert isinstance(_read_sotw(data, stream), Unparsable)
    assert isinstance(_read_sotw(_bytes(NAMES[:2], version="v", nonce=resp.nonce, node=NODE), stream), Request)
