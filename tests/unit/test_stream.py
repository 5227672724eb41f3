"""The xDS stream state machine (SotW and delta), driven by a scripted Envoy-side client that
ACKs, NACKs and changes subscriptions the way Envoy does."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2

from meshd.xds.resource import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    Snapshot,
    XdsResource,
    make_resource,
    version_of,
)
from meshd.xds.stream import DeltaStream, Outcome, Request, Response, SotwStream

Content = Mapping[str, int] | Iterable[str]  # name -> content tag (a different tag = different content)


def _message(type_url: str, name: str, tag: int) -> object:
    if type_url == CLUSTER:
        return cluster_pb2.Cluster(name=name, alt_stat_name=f"t{tag}")
    if type_url == ENDPOINT:
        return endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name, endpoints=[endpoint_components_pb2.LocalityLbEndpoints(priority=tag)]
        )
    if type_url == LISTENER:
        return listener_pb2.Listener(name=name, stat_prefix=f"t{tag}")
    assert type_url == ROUTE
    return route_pb2.RouteConfiguration(name=name, internal_only_headers=[f"t{tag}"])


def resource(type_url: str, name: str, tag: int = 0) -> XdsResource:
    return make_resource(name, _message(type_url, name, tag))


def snapshot(*, cds: Content = (), eds: Content = (), lds: Content = (), rds: Content = ()) -> Snapshot:
    by_type: dict[str, dict[str, XdsResource]] = {}
    for type_url, content in ((CLUSTER, cds), (ENDPOINT, eds), (LISTENER, lds), (ROUTE, rds)):
        tags = content if isinstance(content, Mapping) else dict.fromkeys(content, 0)
        by_type[type_url] = {n: resource(type_url, n, t) for n, t in tags.items()}
    return Snapshot(resources=by_type)


def names(response: Response) -> list[str]:
    return [r.name for r in response.resources]


def of_type(responses: list[Response], type_url: str) -> Response | None:
    found = [r for r in responses if r.type_url == type_url]
    assert len(found) <= 1, found
    return found[0] if found else None


class Client:
    """Envoy's side of one stream: remembers what it subscribed to and builds protocol-correct
    requests (SotW requests repeat the full name list; delta requests carry only changes)."""

    def __init__(self, stream: SotwStream | DeltaStream) -> None:
        self.stream = stream
        self.delta = isinstance(stream, DeltaStream)
        self.names: dict[str, tuple[str, ...]] = {}
        self.accepted: dict[str, str] = {}
        self.last: dict[str, Response] = {}  # latest response replied to, per type

    def subscribe(self, type_url: str, *names: str, initial_versions: Mapping[str, str] | None = None) -> Outcome:
        self.names[type_url] = names
        if self.delta:
            initial = tuple(sorted((initial_versions or {}).items()))
            return self.stream.on_request(Request(type_url, subscribe=names, initial_versions=initial))
        return self.stream.on_request(Request(type_url, resource_names=names))

    def reply(self, resp: Response, *, error: str | None = None, names: tuple[str, ...] | None = None) -> Outcome:
        """ACK (error None) or NACK the response; SotW may change its names in the same request."""
        self.last[resp.type_url] = resp
        if error is None:
            self.accepted[resp.type_url] = resp.version
        if self.delta:
            return self.stream.on_request(Request(resp.type_url, response_nonce=resp.nonce, error_detail=error))
        if names is not None:
            self.names[resp.type_url] = names
        return self.stream.on_request(
            Request(
                resp.type_url,
                version_info=self.accepted.get(resp.type_url, ""),
                response_nonce=resp.nonce,
                resource_names=self.names[resp.type_url],
                error_detail=error,
            )
        )

    def settle(self, snap: Snapshot) -> list[Response]:
        """ACK every response for a snapshot until the stream has nothing more to send (a SotW EDS
        response that followed a CDS push is answered once more); returns the first batch."""
        first = self.stream.responses(snap)
        out = first
        for _ in range(3):
            for resp in out:
                self.reply(resp)
            out = self.stream.responses(snap)
            if not out:
                return first
        raise AssertionError(f"stream does not settle: {out}")


def new_stream(kind: str, prefix: str = "n") -> SotwStream | DeltaStream:
    return SotwStream(nonce_prefix=prefix) if kind == "sotw" else DeltaStream(nonce_prefix=prefix)


KINDS = ["sotw", "delta"]


# --- initial requests, wildcard vs explicit -----------------------------------------------------

CONTENT = {"cds": ["a", "b"], "eds": ["a", "b"], "lds": ["l1", "l2"], "rds": ["r1", "r2"]}


@pytest.mark.parametrize(
    ("kind", "type_url", "subscribe", "expected", "removed"),
    [
        pytest.param("sotw", CLUSTER, (), ["a", "b"], (), id="sotw-cds-empty-names-is-wildcard"),
        pytest.param("sotw", LISTENER, (), ["l1", "l2"], (), id="sotw-lds-empty-names-is-wildcard"),
        pytest.param("sotw", CLUSTER, ("a",), ["a"], (), id="sotw-cds-explicit"),
        pytest.param("sotw", ENDPOINT, ("b",), ["b"], (), id="sotw-eds-explicit"),
        pytest.param("sotw", ROUTE, ("r1", "nope"), ["r1"], (), id="sotw-rds-explicit-missing-skipped"),
        pytest.param("sotw", ENDPOINT, (), [], (), id="sotw-eds-empty-names-is-not-wildcard"),
        pytest.param("delta", CLUSTER, (), ["a", "b"], (), id="delta-cds-no-subscribe-is-wildcard"),
        pytest.param("delta", CLUSTER, ("*",), ["a", "b"], (), id="delta-cds-star-is-wildcard"),
        pytest.param("delta", LISTENER, (), ["l1", "l2"], (), id="delta-lds-no-subscribe-is-wildcard"),
        pytest.param("delta", CLUSTER, ("a",), ["a"], (), id="delta-cds-explicit"),
        pytest.param("delta", ENDPOINT, ("a",), ["a"], (), id="delta-eds-explicit"),
        pytest.param("delta", ROUTE, ("r2", "nope"), ["r2"], ("nope",), id="delta-rds-missing-reported-removed"),
        pytest.param("delta", ENDPOINT, (), None, (), id="delta-eds-nothing-subscribed-no-response"),
    ],
)
def test_initial_request_is_answered(
    kind: str, type_url: str, subscribe: tuple[str, ...], expected: list[str] | None, removed: tuple[str, ...]
) -> None:
    client = Client(new_stream(kind))
    assert client.subscribe(type_url, *subscribe).kind == "initial"
    out = client.stream.responses(snapshot(**CONTENT))
    if expected is None:
        assert out == []
        return
    [resp] = out
    assert resp.type_url == type_url
    assert names(resp) == expected
    assert resp.removed == removed
    assert resp.nonce
    assert resp.version == version_of(resp.resources)


@pytest.mark.parametrize("kind", KINDS)
def test_not_ready_returns_nothing_and_keeps_the_request_pending(kind: str) -> None:
    client = Client(new_stream(kind))
    client.subscribe(CLUSTER)
    snap = snapshot(cds=["a"])
    assert client.stream.responses(snap, ready=False) == []
    assert client.stream.responses(snap, ready=False) == []
    [resp] = client.stream.responses(snap)
    assert names(resp) == ["a"]


# --- ACK and NACK ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("error", "outcome_kind"), [pytest.param(None, "ack", id="ack"), pytest.param("bad cluster", "nack", id="nack")]
)
def test_ack_and_nack_record_the_version_of_the_nonce(kind: str, error: str | None, outcome_kind: str) -> None:
    client = Client(new_stream(kind))
    client.subscribe(CLUSTER)
    [first] = client.settle(snapshot(cds={"a": 0}))
    [resp] = client.stream.responses(snapshot(cds={"a": 1}))
    assert resp.version != first.version

    outcome = client.reply(resp, error=error)

    st = client.stream.state(CLUSTER)
    assert outcome == Outcome(outcome_kind, CLUSTER, version=resp.version, error=error or "")
    if error is None:
        assert (st.acked_version, st.nack_version, st.nack_error) == (resp.version, None, None)
    else:
        # A NACK leaves the last accepted version in place.
        assert (st.acked_version, st.nack_version, st.nack_error) == (first.version, resp.version, error)


def _nack_after_cds_and_eds_push(kind: str) -> tuple[Client, Snapshot, str]:
    client = Client(new_stream(kind))
    client.subscribe(CLUSTER)
    client.subscribe(ENDPOINT, "a")
    client.settle(snapshot(cds={"a": 0}, eds={"a": 0}))
    rejected = snapshot(cds={"a": 1}, eds={"a": 1})
    out = client.stream.responses(rejected)
    assert [r.type_url for r in out] == [CLUSTER, ENDPOINT]
    client.reply(out[0])
    client.reply(out[1], error="bad endpoints")
    return client, rejected, ENDPOINT


def _nack_plain(kind: str, type_url: str) -> tuple[Client, Snapshot, str]:
    client = Client(new_stream(kind))
    if type_url == CLUSTER:
        client.subscribe(CLUSTER)
    else:
        client.subscribe(ENDPOINT, "a")
    client.settle(snapshot(cds={"a": 0}, eds={"a": 0}))
    rejected = snapshot(cds={"a": 1}, eds={"a": 1})
    [resp] = client.stream.responses(rejected)
    client.reply(resp, error="bad")
    return client, rejected, type_url


NACK_SCENARIOS = {
    "sotw-cds": lambda: _nack_plain("sotw", CLUSTER),
    "sotw-eds": lambda: _nack_plain("sotw", ENDPOINT),
    "sotw-eds-pushed-right-after-cds": lambda: _nack_after_cds_and_eds_push("sotw"),
    "delta-cds": lambda: _nack_plain("delta", CLUSTER),
    "delta-eds": lambda: _nack_plain("delta", ENDPOINT),
    "delta-eds-pushed-right-after-cds": lambda: _nack_after_cds_and_eds_push("delta"),
}


@pytest.mark.parametrize("scenario", NACK_SCENARIOS)
def test_nacked_version_is_not_sent_again(scenario: str) -> None:
    client, rejected, type_url = NACK_SCENARIOS[scenario]()
    nacked = client.stream.state(type_url).nack_version
    assert nacked is not None
    # The next push of the same content (same object, or an equal snapshot rebuilt by a new generation).
    assert of_type(client.stream.responses(rejected), type_url) is None
    assert of_type(client.stream.responses(snapshot(cds={"a": 1}, eds={"a": 1})), type_url) is None
    # New content goes out.
    fixed = snapshot(cds={"a": 2}, eds={"a": 2})
    resp = of_type(client.stream.responses(fixed), type_url)
    assert resp is not None
    assert resp.version != nacked
    assert [r.version for r in resp.resources] == [fixed.resources[type_url]["a"].version]


# --- SotW: stale nonces and subscription changes -------------------------------------------------


def _sotw_with_outstanding_response() -> tuple[Client, Snapshot, Response, Response]:
    client = Client(SotwStream(nonce_prefix="s"))
    client.subscribe(ENDPOINT, "a")
    [old] = client.settle(snapshot(eds={"a": 0, "b": 0}))
    current = snapshot(eds={"a": 1, "b": 0})
    [new] = client.stream.responses(current)
    return client, current, old, new


@pytest.mark.parametrize(
    "request_for",
    [
        pytest.param(lambda old: Request(ENDPOINT, old.version, old.nonce, ("a",)), id="ack-of-older-nonce"),
        pytest.param(lambda old: Request(ENDPOINT, old.version, old.nonce, ("a",), "bad"), id="nack-of-older-nonce"),
        pytest.param(lambda old: Request(ENDPOINT, old.version, old.nonce, ("a", "b")), id="names-change-older-nonce"),
        pytest.param(lambda old: Request(ENDPOINT, old.version, "bogus", ("b",)), id="unknown-nonce"),
    ],
)
def test_sotw_stale_nonce_is_ignored(request_for: Callable[[Response], Request]) -> None:
    client, current, old, new = _sotw_with_outstanding_response()
    before = copy.deepcopy(client.stream.types)

    outcome = client.stream.on_request(request_for(old))

    assert outcome == Outcome("stale", ENDPOINT)
    assert client.stream.types == before
    assert client.stream.responses(current) == []
    # The outstanding response is still the one an ACK refers to.
    assert client.reply(new) == Outcome("ack", ENDPOINT, version=new.version)


@pytest.mark.parametrize(
    ("type_url", "before", "after", "expected"),
    [
        pytest.param(ENDPOINT, ("a",), ("a", "b"), ["a", "b"], id="eds-add-name"),
        pytest.param(ENDPOINT, ("a", "b"), ("b",), ["b"], id="eds-drop-name"),
        pytest.param(ENDPOINT, ("a",), (), [], id="eds-drop-all"),
        pytest.param(CLUSTER, (), ("a",), ["a"], id="cds-wildcard-to-explicit"),
        pytest.param(CLUSTER, ("a",), (), ["a", "b"], id="cds-explicit-to-wildcard"),
    ],
)
def test_sotw_subscription_change_with_current_nonce_is_answered(
    type_url: str, before: tuple[str, ...], after: tuple[str, ...], expected: list[str]
) -> None:
    client = Client(SotwStream(nonce_prefix="s"))
    snap = snapshot(cds=["a", "b"], eds=["a", "b"])
    client.subscribe(type_url, *before)
    [resp] = client.stream.responses(snap)

    assert client.reply(resp, names=after).kind == "ack"

    [changed] = client.stream.responses(snap)
    assert names(changed) == expected
    assert changed.nonce != resp.nonce
    # Same names again with the new nonce: nothing more to say.
    client.reply(changed)
    assert client.stream.responses(snap) == []


def test_sotw_sends_the_full_state_of_the_subscription_on_change() -> None:
    client = Client(SotwStream(nonce_prefix="s"))
    client.subscribe(CLUSTER)
    client.settle(snapshot(cds={"a": 0, "b": 0}))
    [resp] = client.stream.responses(snapshot(cds={"a": 1, "b": 0}))
    assert names(resp) == ["a", "b"]
    assert resp.removed == ()


# --- a reconnect: the first request of a type echoes the previous server's nonce and version -----------


def _held_by_envoy(type_url: str, snap: Snapshot, subscribed: tuple[str, ...]) -> Response:
    """What the previous meshd (another process: another nonce prefix) last sent and Envoy ACKed."""
    previous = Client(SotwStream(nonce_prefix="before-restart"))
    previous.subscribe(type_url, *subscribed)
    return previous.settle(snap)[0]


@pytest.mark.parametrize(
    ("type_url", "subscribed"),
    [(CLUSTER, ()), (ENDPOINT, ("a",)), (LISTENER, ()), (ROUTE, ("r1",))],
    ids=["cds", "eds", "lds", "rds"],
)
@pytest.mark.parametrize("config_changed", [False, True], ids=["same-version", "new-version"])
def test_sotw_first_request_with_a_nonce_this_stream_never_issued_is_answered(
    type_url: str, subscribed: tuple[str, ...], config_changed: bool
) -> None:
    # Envoy reconnecting to a restarted meshd keeps its version_info and response_nonce (issue 20, low):
    # on a new stream the first request of a type is the initial request, whatever nonce it carries.
    before = snapshot(cds=["a"], eds=["a"], lds=["l1"], rds=["r1"])
    held = _held_by_envoy(type_url, before, subscribed)
    now = snapshot(cds={"a": 1}, eds={"a": 1}, lds={"l1": 1}, rds={"r1": 1}) if config_changed else before
    stream = SotwStream(nonce_prefix="after-restart")

    outcome = stream.on_request(Request(type_url, held.version, held.nonce, subscribed))

    assert outcome == Outcome("initial", type_url)
    # Answered even when the version is the one Envoy holds (as go-control-plane and istiod do).
    [resp] = stream.responses(now)
    assert (resp.type_url, names(resp)) == (type_url, [held.resources[0].name])
    assert (resp.version == held.version) is not config_changed
    assert resp.nonce != held.nonce
    # From now on the stream has answered: the previous server's nonce is stale, the new one an ACK.
    assert stream.on_request(Request(type_url, held.version, held.nonce, subscribed)) == Outcome("stale", type_url)
    assert stream.responses(now) == []
    assert stream.on_request(Request(type_url, resp.version, resp.nonce, subscribed)).kind == "ack"
    assert stream.responses(now) == []


def test_delta_first_request_with_a_nonce_this_stream_never_issued_is_answered() -> None:
    stream = DeltaStream(nonce_prefix="after-restart")
    outcome = stream.on_request(Request(CLUSTER, response_nonce="before-restart-7", subscribe=("*",)))
    assert outcome == Outcome("initial", CLUSTER)
    [resp] = stream.responses(snapshot(cds=["a", "b"]))
    assert names(resp) == ["a", "b"]


# --- SotW: EDS answered again after a CDS push ---------------------------------------------------


def _sotw_settled() -> tuple[Client, Response]:
    client = Client(SotwStream(nonce_prefix="s"))
    client.subscribe(CLUSTER)
    client.subscribe(ENDPOINT, "a", "b")
    client.settle(snapshot(cds={"a": 0, "b": 0}, eds={"a": 0, "b": 0}))
    return client, client.last[ENDPOINT]


@pytest.mark.parametrize(
    ("cds_pushed", "nonce", "answered"),
    [
        pytest.param(True, "current", True, id="after-cds-push-current-nonce"),
        pytest.param(True, "stale", False, id="after-cds-push-stale-nonce"),
        pytest.param(False, "current", False, id="no-cds-push"),
    ],
)
def test_sotw_eds_request_after_cds_push_is_answered(cds_pushed: bool, nonce: str, answered: bool) -> None:
    client, eds = _sotw_settled()
    snap = snapshot(cds={"a": 1 if cds_pushed else 0, "b": 0}, eds={"a": 0, "b": 0})
    out = client.stream.responses(snap)
    assert [r.type_url for r in out] == ([CLUSTER] if cds_pushed else [])
    for resp in out:
        client.reply(resp)

    # Envoy warming the updated cluster asks for its endpoints again.
    echoed = eds.nonce if nonce == "current" else "s-0"
    client.stream.on_request(Request(ENDPOINT, eds.version, echoed, ("a", "b")))

    again = client.stream.responses(snap)
    if not answered:
        assert again == []
        return
    [resp] = again
    assert (resp.type_url, resp.version, names(resp)) == (ENDPOINT, eds.version, ["a", "b"])
    # Answered once: the ACK of that answer does not trigger another one.
    client.reply(resp)
    assert client.stream.responses(snap) == []


# --- push order -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_push_order_is_cds_eds_lds_rds(kind: str) -> None:
    client = Client(new_stream(kind))
    # Subscribe in the reverse order so insertion order cannot explain the result.
    client.subscribe(ROUTE, "r")
    client.subscribe(LISTENER)
    client.subscribe(ENDPOINT, "c")
    client.subscribe(CLUSTER)
    first = client.settle(snapshot(cds=["c"], eds=["c"], lds=["l"], rds=["r"]))
    assert [r.type_url for r in first] == [CLUSTER, ENDPOINT, LISTENER, ROUTE]

    out = client.stream.responses(snapshot(cds={"c": 1}, eds={"c": 1}, lds={"l": 1}, rds={"r": 1}))
    assert [r.type_url for r in out] == [CLUSTER, ENDPOINT, LISTENER, ROUTE]


@pytest.mark.parametrize("kind", KINDS)
def test_a_type_subscribed_after_the_first_responses_is_answered_in_push_order(kind: str) -> None:
    """As Envoy subscribes: CDS answered first, then the others one request at a time (the order the stream
    keeps is brought up to date as types are added)."""
    client = Client(new_stream(kind))
    snap = snapshot(cds=["c"], eds=["c"], lds=["l"], rds=["r"])
    client.subscribe(CLUSTER)
    assert [r.type_url for r in client.settle(snap)] == [CLUSTER]
    client.subscribe(LISTENER)
    assert [r.type_url for r in client.settle(snap)] == [LISTENER]
    client.subscribe(ROUTE, "r")
    client.subscribe(ENDPOINT, "c")
    assert [r.type_url for r in client.settle(snap)] == [ENDPOINT, ROUTE]
    out = client.stream.responses(snapshot(cds={"c": 1}, eds={"c": 1}, lds={"l": 1}, rds={"r": 1}))
    assert [r.type_url for r in out] == [CLUSTER, ENDPOINT, LISTENER, ROUTE]


# --- delta: subscriptions, changes, removals --------------------------------------------------------


def _delta_eds(*subscribed: str) -> tuple[Client, Response]:
    client = Client(DeltaStream(nonce_prefix="d"))
    client.subscribe(ENDPOINT, *subscribed)
    [resp] = client.settle(snapshot(eds=["a", "b", "c"]))
    return client, resp


@pytest.mark.parametrize(
    "nonce_for",
    [
        pytest.param(lambda first: "", id="no-nonce"),
        pytest.param(lambda first: "d-999", id="unknown-nonce"),
        pytest.param(lambda first: first.nonce, id="already-acked-nonce"),
    ],
)
def test_delta_subscribe_is_honoured_with_any_nonce(nonce_for: Callable[[Response], str]) -> None:
    client, first = _delta_eds("a")
    assert names(first) == ["a"]

    outcome = client.stream.on_request(Request(ENDPOINT, response_nonce=nonce_for(first), subscribe=("b",)))

    assert outcome.kind == "subscribe"
    [resp] = client.stream.responses(snapshot(eds=["a", "b", "c"]))
    assert (names(resp), resp.removed) == (["b"], ())


@pytest.mark.parametrize(
    "nonce_for",
    [
        pytest.param(lambda first: "", id="no-nonce"),
        pytest.param(lambda first: "d-999", id="unknown-nonce"),
        pytest.param(lambda first: first.nonce, id="already-acked-nonce"),
    ],
)
def test_delta_unsubscribe_is_honoured_with_any_nonce(nonce_for: Callable[[Response], str]) -> None:
    client, first = _delta_eds("a", "b")
    assert names(first) == ["a", "b"]

    outcome = client.stream.on_request(Request(ENDPOINT, response_nonce=nonce_for(first), unsubscribe=("a",)))

    assert outcome.kind == "subscribe"
    client.settle(snapshot(eds=["a", "b", "c"]))
    [resp] = client.stream.responses(snapshot(eds={"a": 1, "b": 1, "c": 1}))
    assert (names(resp), resp.removed) == (["b"], ())


@pytest.mark.parametrize(
    ("subscribe", "expected"),
    [
        pytest.param(("*",), ["b", "c"], id="star-switches-to-wildcard"),
        pytest.param(("c",), ["c"], id="explicit-name-added"),
    ],
)
def test_delta_explicit_cds_subscription_can_widen(subscribe: tuple[str, ...], expected: list[str]) -> None:
    client = Client(DeltaStream(nonce_prefix="d"))
    client.subscribe(CLUSTER, "a")
    snap = snapshot(cds=["a", "b", "c"])
    [first] = client.settle(snap)
    assert names(first) == ["a"]

    outcome = client.stream.on_request(Request(CLUSTER, response_nonce=first.nonce, subscribe=subscribe))

    assert outcome.kind == "subscribe"

    [resp] = client.stream.responses(snap)
    assert (names(resp), resp.removed) == (expected, ())


@pytest.mark.parametrize(
    ("type_url", "subscribe", "before", "after", "expected", "removed"),
    [
        pytest.param(
            CLUSTER, (), {"a": 0, "b": 0, "c": 0}, {"a": 1, "b": 0, "d": 0}, ["a", "d"], ("c",), id="cds-wildcard"
        ),
        pytest.param(LISTENER, (), {"l": 0, "m": 0}, {"l": 0}, [], ("m",), id="lds-wildcard-removal-only"),
        pytest.param(ENDPOINT, ("a", "b"), {"a": 0, "b": 0}, {"a": 0}, [], ("b",), id="eds-subscribed-removed"),
        pytest.param(
            ENDPOINT,
            ("a", "b"),
            {"a": 0, "b": 0, "z": 0},
            {"a": 0, "b": 1, "z": 1},
            ["b"],
            (),
            id="eds-unsubscribed-ignored",
        ),
        pytest.param(ROUTE, ("r",), {"r": 0}, {"r": 1}, ["r"], (), id="rds-changed"),
        pytest.param(CLUSTER, (), {"a": 0}, {"a": 0}, None, (), id="unchanged-no-response"),
    ],
)
def test_delta_sends_only_changes_and_lists_removals(
    type_url: str,
    subscribe: tuple[str, ...],
    before: dict[str, int],
    after: dict[str, int],
    expected: list[str] | None,
    removed: tuple[str, ...],
) -> None:
    key = {CLUSTER: "cds", ENDPOINT: "eds", LISTENER: "lds", ROUTE: "rds"}[type_url]
    client = Client(DeltaStream(nonce_prefix="d"))
    client.subscribe(type_url, *subscribe)
    client.settle(snapshot(**{key: before}))

    out = client.stream.responses(snapshot(**{key: after}))

    if expected is None:
        assert out == []
        return
    [resp] = out
    assert (names(resp), resp.removed) == (expected, removed)
    client.reply(resp)
    assert client.stream.responses(snapshot(**{key: after})) == []


@pytest.mark.parametrize(
    ("type_url", "subscribe", "client_has", "expected", "removed"),
    [
        pytest.param(CLUSTER, (), {"a": 0, "b": 9, "z": 0}, ["b", "c"], ("z",), id="cds-wildcard"),
        pytest.param(CLUSTER, (), {"a": 0, "b": 0, "c": 0}, [], (), id="cds-wildcard-all-current"),
        pytest.param(ENDPOINT, ("a", "b"), {"a": 0}, ["b"], (), id="eds-explicit"),
        pytest.param(ENDPOINT, ("a", "b"), {"a": 0, "b": 9}, ["b"], (), id="eds-explicit-outdated"),
    ],
)
def test_delta_initial_resource_versions_suppress_what_the_client_has(
    type_url: str, subscribe: tuple[str, ...], client_has: dict[str, int], expected: list[str], removed: tuple[str, ...]
) -> None:
    content = {"a": 0, "b": 0, "c": 0}
    snap = snapshot(cds=content, eds=content)
    client = Client(DeltaStream(nonce_prefix="d"))
    versions = {n: resource(type_url, n, tag).version for n, tag in client_has.items()}

    assert client.subscribe(type_url, *subscribe, initial_versions=versions).kind == "initial"

    [resp] = client.stream.responses(snap)
    assert (names(resp), resp.removed) == (expected, removed)


@pytest.mark.parametrize(
    ("clusters_after", "expected_eds"),
    [
        pytest.param({"a": 1, "b": 0}, ["a"], id="cluster-a-changed"),
        pytest.param({"a": 1, "b": 1}, ["a", "b"], id="both-changed"),
        pytest.param({"a": 0, "b": 0, "c": 0}, [], id="only-unrelated-cluster-added"),
    ],
)
def test_delta_cds_change_resends_that_clusters_endpoints(
    clusters_after: dict[str, int], expected_eds: list[str]
) -> None:
    client = Client(DeltaStream(nonce_prefix="d"))
    client.subscribe(CLUSTER)
    client.subscribe(ENDPOINT, "a", "b")
    endpoints = {"a": 0, "b": 0}
    client.settle(snapshot(cds={"a": 0, "b": 0}, eds=endpoints))

    out = client.stream.responses(snapshot(cds=clusters_after, eds=endpoints))

    assert out[0].type_url == CLUSTER
    eds = of_type(out, ENDPOINT)
    assert (names(eds) if eds else []) == expected_eds


# --- nonces -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_nonces_are_unique_within_and_across_streams(kind: str) -> None:
    nonces: list[str] = []
    for prefix in ("conn-1", "conn-2"):
        client = Client(new_stream(kind, prefix))
        client.subscribe(CLUSTER)
        client.subscribe(ENDPOINT, "a")
        for tag in range(3):
            nonces += [r.nonce for r in client.settle(snapshot(cds={"a": tag}, eds={"a": tag}))]
    assert len(nonces) >= 12
    assert len(set(nonces)) == len(nonces)


@pytest.mark.parametrize("kind", ["sotw", "delta"])
def test_a_refused_type_is_never_subscribed_nor_sent(kind: str) -> None:
    """A stream without a verified identity refuses SDS secrets (xds/access.py): the request is
    answered `refused`, and no later snapshot sends anything of that type."""
    cls = SotwStream if kind == "sotw" else DeltaStream
    stream = cls(nonce_prefix="r", refused=frozenset({ROUTE}))
    asked = Request(type_url=ROUTE, resource_names=("r1",), subscribe=("r1",))
    assert stream.on_request(asked) == Outcome("refused", ROUTE)
    assert stream.on_request(Request(type_url=CLUSTER)).kind == "initial"
    responses = stream.responses(snapshot(cds={"c1": 1}, rds={"r1": 1}))
    assert [r.type_url for r in responses] == [CLUSTER]
    assert stream.responses(snapshot(cds={"c1": 2}, rds={"r1": 2}))[0].type_url == CLUSTER
    assert ROUTE not in stream.types
