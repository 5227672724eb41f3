"""The ADS gRPC servicer (grpc.aio): StreamAggregatedResources (SotW) and
DeltaAggregatedResources. Thin: protocol decisions are in stream.py, config in the hub, who may be
served secrets in access.py (a servicer without `authorize` serves none).

A slow client delays only itself: each stream computes and writes its own responses in its own task,
one message at a time, and shares no slot with other streams while it waits for its client to read
(HTTP/2 flow control); the hub only sets its inbox's push flag. What one stream can hold is bounded:
one message being written, one pending push, the inbox's requests (inbox.py), for at most the send
timeout. How many streams a server admits, in all and per peer, is bounded in limits.py.
A request protobuf cannot parse (nested beyond its depth limit, ...) or a node whose metadata nests too
deep ends its stream with INVALID_ARGUMENT and the reason."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import json_format

from meshd.clock import Clock
from meshd.obs.logsafe import quoted
from meshd.obs.metrics import Metrics
from meshd.obs.ratelimit import LogLimiter
from meshd.translate.proxy import (
    InvalidNodeId,
    InvalidNodeMetadata,
    check_node_metadata,
    has_capture,
    has_sds,
    is_proxyless,
    parse_node_id,
    string_metadata,
)
from meshd.xds.access import PROTECTED_TYPES, Authorize, secret_refusal
from meshd.xds.debug_stream import DebugTypes
from meshd.xds.debug_types import is_debug_type
from meshd.xds.encode import ResponseBytes
from meshd.xds.hub import Connection, Hub
from meshd.xds.inbox import CLOSED, PUSH, Inbox
from meshd.xds.limits import StreamLimits, peer_host
from meshd.xds.request_bytes import NamesBytes, Received, Unparsable, names_bytes, parse_sotw, parser, recognise_ack
from meshd.xds.resource import short_name
from meshd.xds.stream import DeltaStream, NameSets, Outcome, Request, SotwStream
from meshd.xds.write_watch import WriteWatch


def _read_sotw(data: bytes, stream: SotwStream | None) -> Request | Any:
    """A SotW request from its bytes: an ACK of the names last requested, recognised without parsing it
    (request_bytes.py), as a Request; else the parsed message (an Unparsable for bytes protobuf refuses)."""
    if stream is not None and (ack := recognise_ack(data, stream)) is not None:
        return ack
    return parse_sotw(data)


def _sotw_request(req: Any, data: bytes, stream: SotwStream, intern: NamesBytes) -> Request:
    """A parsed SotW request, its names' bytes kept (interned) so that the next ACK is recognised."""
    nack = req.HasField("error_detail")
    key = names_bytes(data, version=req.version_info, type_url=req.type_url, nonce=req.response_nonce, nack=nack)
    key = intern(key) if key is not None else None
    names = stream.requested_names(req.type_url, key)  # the same names after all (a stale nonce): that tuple
    return Request(
        type_url=req.type_url,
        version_info=req.version_info,
        response_nonce=req.response_nonce,
        resource_names=tuple(req.resource_names) if names is None else names,
        error_detail=req.error_detail.message if nack else None,
        names_key=key,
    )


def _delta_request(req: Any) -> Request:
    return Request(
        type_url=req.type_url,
        response_nonce=req.response_nonce,
        subscribe=tuple(req.resource_names_subscribe),
        unsubscribe=tuple(req.resource_names_unsubscribe),
        initial_versions=tuple(sorted(req.initial_resource_versions.items())),
        error_detail=req.error_detail.message if req.HasField("error_detail") else None,
    )


class AdsServicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    def __init__(
        self,
        *,
        hub: Hub,
        metrics: Metrics,
        clock: Clock,
        log: logging.Logger,
        send_timeout_s: float = 30.0,
        limits: StreamLimits | None = None,
        authorize: Authorize | None = None,
        debug: DebugTypes | None = None,
    ) -> None:
        self._hub = hub
        # Istio's debug types (istio.io/debug/syncz, ...) on streams of their own; None: refused.
        self._debug = debug
        # Identity check before a stream is admitted (the secure port): the verified caller, or
        # (code, message). Without it (the plaintext port) no stream is ever served a secret.
        self._authorize = authorize
        self._send_timeout = send_timeout_s
        self._limits = limits if limits is not None else StreamLimits(max_streams=100_000, max_per_peer=None)
        self._metrics = metrics
        self._clock = clock
        self._log = log
        # Per-peer (or per-proxy) events a client can repeat at will are logged at most a few times a minute.
        self._log_limit = LogLimiter(now=clock.now)
        # Nonces carry a per-process random prefix: unique across meshd restarts.
        self._boot = secrets.token_hex(4)
        self._names = NameSets()  # equal subscriptions of different streams as one object
        self._names_bytes = NamesBytes()  # and their bytes (request_bytes.py)
        self._responses = ResponseBytes()

    async def StreamAggregatedResources(self, request_iterator: Any, context: Any) -> None:
        await self._serve(request_iterator, context, delta=False)

    async def DeltaAggregatedResources(self, request_iterator: Any, context: Any) -> None:
        await self._serve(request_iterator, context, delta=True)

    async def _serve(self, requests: Any, context: Any, *, delta: bool) -> None:
        peer = peer_host(_peer(context))
        refused = self._limits.admit(peer)
        if refused is not None:
            self._metrics.xds_streams_refused.inc(refused)
            if (dropped := self._log_limit.allow(("stream_refused", peer))) is not None:
                self._log.warning(
                    "event=stream_refused reason=%s peer=%s dropped=%d", refused, quoted(peer, 100), dropped
                )
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"too many xDS streams ({refused})")
        try:
            await self._serve_admitted(requests, context, delta=delta)
        finally:
            self._limits.release(peer)

    async def _serve_admitted(self, requests: Any, context: Any, *, delta: bool) -> None:
        inbox = Inbox()
        watch = WriteWatch(self._send_timeout)  # a write the proxy does not read in time ends the stream
        reader = asyncio.create_task(self._read(requests, inbox))
        conn: Connection | None = None
        try:
            while True:
                item = await inbox.get()
                if item is CLOSED:
                    return
                req: Request | None = None
                data = b""
                if isinstance(item, Received):
                    data = item.data
                    sotw = conn.stream if conn is not None and isinstance(conn.stream, SotwStream) else None
                    item = _read_sotw(data, sotw)
                    if isinstance(item, Request):
                        req = item  # an ACK, not parsed
                # A push carries the time of the change behind it; a reply to a request, now.
                changed_at = self._clock.now()
                if item is PUSH:
                    assert conn is not None
                    changed_at = self._hub.changed_at
                else:
                    if req is None:  # parsed: the stream's first request, a changed subscription, a NACK, delta
                        opened = await self._parsed_request(item, data, conn, inbox, context, delta=delta)
                        if opened is None:
                            return  # a debug stream, served to its end
                        conn, req = opened
                    assert conn is not None
                    outcome = conn.stream.on_request(req)
                    if outcome.kind == "limit":
                        if (dropped := self._log_limit.allow(("stream_limit", conn.proxy.node_id))) is not None:
                            self._log.warning(
                                "event=stream_limit proxy=%s reason=%s dropped=%d",
                                quoted(conn.proxy.node_id),
                                outcome.error,
                                dropped,
                            )
                        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, outcome.error)
                    self._record(conn, outcome, req)
                if conn.snapshot is None:
                    continue  # not ready: nothing is served before the config has loaded
                await self._send(conn, context, watch, changed_at=changed_at, delta=delta)
        finally:
            watch.close()
            reader.cancel()
            if conn is not None:
                self._hub.disconnect(conn)
                self._metrics.xds_connected.labels("meshd").set(len(self._hub.connections))
                self._log.info("event=disconnected proxy=%s", quoted(conn.proxy.node_id))

    async def _parsed_request(
        self, item: Any, data: bytes, conn: Connection | None, inbox: Inbox, context: Any, *, delta: bool
    ) -> tuple[Connection, Request] | None:
        """A parsed request as the stream's Request, the stream opened by its first one; None when the
        stream was a debug one and has been served."""
        if isinstance(item, Unparsable):
            await self._reject(context, conn, item.reason)
        if conn is None and is_debug_type(item.type_url):
            if self._debug is None:
                await context.abort(grpc.StatusCode.UNIMPLEMENTED, "debug types are not served here")
            assert self._debug is not None
            await self._debug.serve(item, inbox, context, delta=delta)
            return None
        if conn is None:
            if not self._hub.ready:
                # Not synced yet: refuse rather than serve a partial mesh; Envoy keeps its last config and retries.
                await context.abort(grpc.StatusCode.UNAVAILABLE, "meshd has not loaded its config yet")
            conn = await self._open(item, inbox, context, delta=delta)
        if isinstance(conn.stream, SotwStream):
            return conn, _sotw_request(item, data, conn.stream, self._names_bytes)
        return conn, _delta_request(item)

    async def _send(self, conn: Connection, context: Any, watch: WriteWatch, *, changed_at: float, delta: bool) -> None:
        assert conn.snapshot is not None
        view = conn.isolation.view(conn.snapshot)  # the versions it rejected held back
        for resp in conn.stream.responses(view):
            conn.isolation.sent(resp.type_url, resp.nonce, view)
            conn.change_times[resp.type_url] = (resp.nonce, changed_at)
            message = self._responses(resp, delta=delta)  # shared by the streams sending the same one
            kind = short_name(resp.type_url)
            # Counted before the write: its completion can reach this loop after Envoy has already
            # applied the response, and the counters must never lag what a proxy holds.
            self._metrics.xds_pushes.inc(kind)
            self._metrics.xds_bytes.inc(kind, len(message))
            watch.writing()  # (no timer per write: write_watch.py)
            try:
                await context.write(message)
            except asyncio.CancelledError:
                if not watch.stuck():
                    raise
                self._log.error(
                    "event=stuck_proxy proxy=%s type=%s timeout_s=%s",
                    quoted(conn.proxy.node_id),
                    kind,
                    self._send_timeout,
                )
                await context.abort(grpc.StatusCode.UNAVAILABLE, "proxy did not read its xDS stream in time")
            finally:
                watch.written()
            self._metrics.push_time.labels(kind).observe(max(0.0, self._clock.now() - changed_at))
            if self._log.isEnabledFor(logging.DEBUG):
                self._log.debug(
                    "event=push proxy=%s type=%s version=%s nonce=%s resources=%d removed=%d",
                    quoted(conn.proxy.node_id),
                    kind,
                    resp.version,
                    resp.nonce,
                    len(resp.resources),
                    len(resp.removed),
                )

    async def _open(self, first: Any, inbox: Inbox, context: Any, *, delta: bool) -> Connection:
        try:
            proxy = parse_node_id(first.node.id)
            metadata = json_format.MessageToDict(first.node.metadata)
            check_node_metadata(metadata)
        except (InvalidNodeId, InvalidNodeMetadata) as exc:
            await self._reject(context, None, str(exc))
            raise  # unreachable: abort raises
        if is_proxyless(metadata):  # a gRPC library, not Envoy: no SDS, no capture listeners
            proxy = dataclasses.replace(proxy, proxyless=True)
        else:
            proxy = dataclasses.replace(
                proxy, sds=has_sds(metadata), capture=has_capture(metadata), metadata=string_metadata(metadata)
            )
        verified: str | None = None
        if self._authorize is not None:
            verdict = await self._authorize(context, proxy)
            if isinstance(verdict, tuple):
                if (dropped := self._log_limit.allow(("rejected_stream", proxy.node_id))) is not None:
                    self._log.warning(
                        "event=rejected_stream proxy=%s code=%s reason=%s dropped=%d",
                        quoted(proxy.node_id),
                        verdict[0],
                        quoted(verdict[1], 400),
                        dropped,
                    )
                await context.abort(*verdict)
                raise AssertionError("unreachable: abort raises")
            verified = verdict.namespace
        no_secrets = secret_refusal(verified_namespace=verified, proxy=proxy) is not None
        refused = PROTECTED_TYPES if no_secrets else frozenset()
        stream = (DeltaStream if delta else SotwStream)(nonce_prefix=self._boot, refused=refused, names=self._names)
        conn = self._hub.connect(proxy=proxy, stream=stream, now=self._clock.now(), inbox=inbox)
        conn.verified_namespace = verified
        failure = self._hub.failures.get(proxy.node_id)
        if conn.snapshot is None and failure is not None:  # served once a generation builds its config
            self._metrics.build_failures.inc("proxy")
            self._log.error(
                "event=proxy_build_failed proxy=%s error=%s", quoted(proxy.node_id), quoted(failure.error, 300)
            )
        self._metrics.xds_connected.labels("meshd").set(len(self._hub.connections))
        self._log.info("event=connected proxy=%s delta=%s", quoted(proxy.node_id), delta)
        return conn

    async def _reject(self, context: Any, conn: Connection | None, reason: str) -> None:
        """End the stream with INVALID_ARGUMENT for a malformed request; logged a few times a minute per peer."""
        key = ("rejected_stream", conn.proxy.node_id if conn is not None else peer_host(_peer(context)))
        if (dropped := self._log_limit.allow(key)) is not None:
            shown = quoted(conn.proxy.node_id) if conn is not None else "-"
            self._log.warning(
                "event=rejected_stream proxy=%s reason=%s dropped=%d", shown, quoted(reason, 400), dropped
            )
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, reason)

    def _record(self, conn: Connection, outcome: Outcome, req: Request) -> None:
        if outcome.kind == "refused":
            self._refuse_secrets(conn, req)
            return
        nonce = req.response_nonce
        kind = short_name(outcome.type_url)
        changed_at = None
        sent = conn.change_times.get(outcome.type_url)
        if outcome.kind in ("ack", "nack") and sent is not None and sent[0] == nonce:
            changed_at = sent[1]
            del conn.change_times[outcome.type_url]
        if outcome.kind == "ack":
            conn.isolation.accepted(outcome.type_url, nonce)
        if outcome.kind == "nack":
            rejected = conn.isolation.nacked(outcome.type_url, nonce, outcome.error or "")
            if rejected:
                self._log.warning(
                    "event=resources_isolated proxy=%s type=%s names=%s",
                    quoted(conn.proxy.node_id),
                    kind,
                    quoted([r.name for r in rejected][:10], 600),
                )
            self._metrics.xds_rejects.inc(kind)
            if (dropped := self._log_limit.allow(("nack", conn.proxy.node_id))) is not None:
                self._log.error(
                    "event=nack proxy=%s type=%s version=%s error=%s dropped=%d",
                    quoted(conn.proxy.node_id),
                    kind,
                    quoted(outcome.version),
                    quoted(outcome.error, 1000),
                    dropped,
                )
        elif outcome.kind == "ack" and changed_at is not None:
            self._metrics.convergence.observe(max(0.0, self._clock.now() - changed_at))

    def _refuse_secrets(self, conn: Connection, req: Request) -> None:
        """A request for secrets this stream may not have: never answered; counted, logged once per stream."""
        refusal = secret_refusal(verified_namespace=conn.verified_namespace, proxy=conn.proxy)
        reason, message = refusal if refusal is not None else ("protected", "type not served on this stream")
        self._metrics.secret_refusals.inc(reason)
        conn.secret_refusals += 1
        if conn.secret_refusals == 1:
            names = [*req.resource_names, *req.subscribe][:5]
            self._log.warning(
                "event=sds_refused proxy=%s reason=%s names=%s message=%s",
                quoted(conn.proxy.node_id),
                reason,
                quoted(names),
                quoted(message),
            )

    @staticmethod
    async def _read(requests: Any, inbox: Inbox) -> None:
        try:
            async for req in requests:
                await inbox.put(req)  # waits while the inbox is full: the client waits too
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass
        except Exception:
            pass
        finally:
            inbox.close()


def _peer(context: Any) -> str:
    try:
        return str(context.peer())
    except Exception:
        return "?"


def add_to_server(server: grpc.aio.Server, servicer: AdsServicer) -> None:
    """Register the ADS service with requests parsed by protobuf and responses written as the
    bytes encode.py assembled (no response message is ever built)."""
    handler = grpc.method_handlers_generic_handler(
        "envoy.service.discovery.v3.AggregatedDiscoveryService",
        {
            "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                servicer.StreamAggregatedResources,
                request_deserializer=Received,
                response_serializer=_as_is,
            ),
            "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                servicer.DeltaAggregatedResources,
                request_deserializer=parser(discovery_pb2.DeltaDiscoveryRequest),
                response_serializer=_as_is,
            ),
        },
    )
    server.add_generic_rpc_handlers((handler,))


def _as_is(body: bytes) -> bytes:
    return body
