"""A Kubernetes API server for tests, speaking the real wire protocol over HTTP.

meshd's production Kubernetes client (kubernetes-asyncio, configured from a kubeconfig) runs
against it unchanged. It implements what meshd uses: discovery, list (resourceVersion, limit and
continue, label and field selectors), watch (chunked JSON event lines from a resourceVersion,
bookmarks, `410 Expired` as an ERROR event or as HTTP 410), create / replace / merge-patch /
json-patch / delete with preconditions, the status subresource, CRDs appearing and vanishing,
Leases, and TokenReview. Tests change objects directly (`create`, `update`, `delete`) or over HTTP
(`KubeRest`), inject faults (`fail`, `drop_watches`, `send_garbage`, `compact`, `pause`), and read
what clients did (`requests`, `count`, `open_watches`).

It runs inside the test's event loop: `await server.start()` ... `await server.stop()`.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import pathlib
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.kubeapi.kinds import ALL, ISTIO, Kind, version_priority
from tests.kubeapi.patch import PatchError, json_patch, merge_patch
from tests.kubeapi.store import ApiError, Event, Obj, ObjectStore, Watcher, status_object

MAX_BODY = 3 * 1024 * 1024  # the real server's request size limit (3 MiB)


@dataclass(frozen=True)
class TokenIdentity:
    username: str
    uid: str = ""
    groups: tuple[str, ...] = ("system:serviceaccounts", "system:authenticated")
    audiences: tuple[str, ...] = ("istio-ca",)


@dataclass
class RequestRecord:
    time: float
    method: str
    path: str
    verb: str  # list, watch, get, create, update, patch, delete, discovery, tokenreview
    kind: str  # the Kind's name ("Service", "VirtualService"), "" for discovery
    namespace: str | None
    name: str | None
    subresource: str
    query: dict[str, str]
    status: int = 0


@dataclass
class _Fault:
    status: int
    count: int
    verb: str | None
    kind: str | None
    retry_after: int | None


@dataclass
class _Route:
    kind: Kind
    version: str
    namespace: str | None
    name: str | None
    subresource: str


@dataclass(eq=False)
class _OpenWatch:
    kind: Kind
    watcher: Watcher
    transport: Any
    control: list[str] = field(default_factory=list)


def _parse_selector(text: str) -> Callable[[dict[str, str]], bool]:
    """Equality-based selectors: `a=b`, `a==b`, `a!=b`, `a`, `!a`, comma-separated."""
    terms: list[tuple[str, str, str]] = []  # (op, key, value)
    for raw in filter(None, (t.strip() for t in text.split(","))):
        if "!=" in raw:
            key, value = raw.split("!=", 1)
            terms.append(("!=", key.strip(), value.strip()))
        elif "=" in raw:
            key, value = raw.replace("==", "=").split("=", 1)
            terms.append(("=", key.strip(), value.strip()))
        elif raw.startswith("!"):
            terms.append(("!", raw[1:].strip(), ""))
        else:
            terms.append(("exists", raw, ""))

    def holds(labels: dict[str, str], op: str, key: str, value: str) -> bool:
        if op == "=":
            return labels.get(key) == value
        if op == "!=":
            return labels.get(key) != value
        return (key in labels) == (op == "exists")

    return lambda labels: all(holds(labels, *term) for term in terms)


def _matcher(query: dict[str, str]) -> Callable[[Obj], bool]:
    labels = _parse_selector(query.get("labelSelector", ""))
    fields = _parse_selector(query.get("fieldSelector", ""))

    def match(obj: Obj) -> bool:
        meta = obj.get("metadata", {})
        return labels(meta.get("labels") or {}) and fields(
            {
                "metadata.name": meta.get("name", ""),
                "metadata.namespace": meta.get("namespace", ""),
                "type": obj.get("type", ""),
            }
        )

    return match


class FakeApiServer:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        crds: Iterable[Kind] = ISTIO,
        bookmark_interval_s: float = 1.0,
        history_limit: int = 10_000,
        required_token: str | None = None,
    ) -> None:
        self.host = host
        self.port = 0
        self.store = ObjectStore(history_limit=history_limit)
        self.builtin = {k.key: k for k in ALL if not k.crd}
        self.crds: dict[tuple[str, str], Kind] = {}
        self.bookmark_interval_s = bookmark_interval_s
        self.required_token = required_token
        self.expired_mode = "event"
        self.tokens: dict[str, TokenIdentity] = {}
        self.requests: list[RequestRecord] = []
        self._faults: list[_Fault] = []
        self._watches: set[_OpenWatch] = set()
        self._transports: weakref.WeakSet[Any] = weakref.WeakSet()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        for kind in crds:
            self.install_crd(kind.group, kind.kind, kind.versions, plural=kind.plural)

    # ---------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware], client_max_size=MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        await self._listen()

    async def _listen(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await self._site.start()
        if not self.port:
            server = self._site._server
            assert server is not None
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def pause(self) -> None:
        """Stop listening and cut every open connection: clients now get `connection refused`."""
        if self._site is not None:
            await self._site.stop()
            self._site = None
        self.drop_watches()
        for transport in list(self._transports):
            transport.close()

    async def resume(self) -> None:
        if self._site is None:
            await self._listen()

    async def stop(self) -> None:
        self.drop_watches()
        for transport in list(self._transports):
            transport.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def write_kubeconfig(self, path: pathlib.Path, *, namespace: str = "istio-system") -> pathlib.Path:
        user: dict[str, Any] = {"token": self.required_token} if self.required_token else {}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": user}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}],
            "current-context": "fake",
        }
        path.write_text(json.dumps(config, indent=2))
        return path

    # ---------------------------------------------------------------- kinds and CRDs

    def kinds(self) -> list[Kind]:
        return [*self.builtin.values(), *self.crds.values()]

    def _kind(self, group: str, plural: str) -> Kind | None:
        return self.builtin.get((group, plural)) or self.crds.get((group, plural))

    def kind_of(self, api_version: str, kind: str) -> Kind:
        group = api_version.rpartition("/")[0]
        for candidate in self.kinds():
            if candidate.group == group and candidate.kind == kind:
                return candidate
        raise ApiError(404, "NotFound", f"the server could not find the requested resource ({api_version} {kind})")

    def install_crd(self, group: str, kind: str, versions: Iterable[str], *, plural: str | None = None) -> None:
        versions = tuple(sorted(versions, key=version_priority, reverse=True))
        plural = plural or kind.lower() + "s"
        spec = Kind(group, kind, plural, versions=versions, status=True, crd=True)
        self.crds[spec.key] = spec
        crd_kind = self.builtin[("apiextensions.k8s.io", "customresourcedefinitions")]
        crd = {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.{group}"},
            "spec": {
                "group": group,
                "names": {"kind": kind, "plural": plural, "listKind": f"{kind}List", "singular": kind.lower()},
                "scope": "Namespaced",
                "versions": [
                    {"name": v, "served": True, "storage": i == 0, "subresources": {"status": {}}}
                    for i, v in enumerate(versions)
                ],
            },
        }
        if self.store.get(crd_kind, "", crd["metadata"]["name"]) is None:
            self.store.create(crd_kind, crd)

    def remove_crd(self, group: str, kind: str) -> None:
        for key, spec in list(self.crds.items()):
            if spec.group == group and spec.kind == kind:
                del self.crds[key]
                self.store.drop_kind(spec)
                self.drop_watches(kind)
                crd_kind = self.builtin[("apiextensions.k8s.io", "customresourcedefinitions")]
                if self.store.get(crd_kind, "", f"{spec.plural}.{group}") is not None:
                    self.store.delete(crd_kind, "", f"{spec.plural}.{group}")

    # ---------------------------------------------------------------- direct object access (tests)

    @property
    def resource_version(self) -> str:
        return str(self.store.rv)

    def create(self, obj: Obj) -> Obj:
        return copy.deepcopy(self.store.create(self.kind_of(obj["apiVersion"], obj["kind"]), obj))

    def update(self, obj: Obj, *, subresource: str = "") -> Obj:
        return copy.deepcopy(
            self.store.update(self.kind_of(obj["apiVersion"], obj["kind"]), obj, subresource=subresource)
        )

    def apply(self, obj: Obj) -> Obj:
        """Create, or replace whatever is there (no resourceVersion precondition)."""
        kind = self.kind_of(obj["apiVersion"], obj["kind"])
        meta = obj.get("metadata", {})
        if self.store.get(kind, meta.get("namespace", "default"), meta["name"]) is None:
            return self.create(obj)
        obj = copy.deepcopy(obj)
        obj["metadata"].pop("resourceVersion", None)
        if kind.namespaced:
            obj["metadata"].setdefault("namespace", "default")
        updated = self.store.update(kind, obj)
        if "status" in obj and kind.status:
            updated = self.store.update(kind, {**obj, "metadata": dict(updated["metadata"])}, subresource="status")
        return copy.deepcopy(updated)

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Obj | None:
        found = self.store.get(self.kind_of(api_version, kind), namespace, name)
        return copy.deepcopy(found) if found is not None else None

    def list(self, api_version: str, kind: str, namespace: str | None = None) -> list[Obj]:
        return copy.deepcopy(self.store.list(self.kind_of(api_version, kind), namespace))

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> Obj:
        return copy.deepcopy(self.store.delete(self.kind_of(api_version, kind), namespace, name))

    # ---------------------------------------------------------------- faults

    def fail(
        self,
        *,
        status: int = 500,
        count: int = 1,
        verb: str | None = None,
        kind: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        """The next `count` requests matching verb/kind (None: any) are answered with `status`."""
        self._faults.append(_Fault(status, count, verb, kind, retry_after))

    def clear_faults(self) -> None:
        self._faults.clear()

    def _control(self, kind: str | None, command: str) -> int:
        hit = 0
        for watch in list(self._watches):
            if kind is None or watch.kind.kind == kind:
                watch.control.append(command)
                watch.watcher.queue.put_nowait(command)
                hit += 1
        return hit

    def drop_watches(self, kind: str | None = None, *, mid_event: bool = False) -> int:
        """Cut open watch streams abruptly (no terminating chunk); `mid_event` first writes half an event."""
        return self._control(kind, "drop-mid" if mid_event else "drop")

    def send_garbage(self, kind: str | None = None) -> int:
        """Write a line that is not JSON into open watch streams."""
        return self._control(kind, "garbage")

    def send_bookmarks(self, kind: str | None = None) -> int:
        return self._control(kind, "bookmark")

    def compact(self) -> None:
        """Forget the event history: a watch resuming from an older resourceVersion gets 410 Expired."""
        self.store.compact()

    # ---------------------------------------------------------------- observation

    def count(self, *, verb: str | None = None, kind: str | None = None, since: float = 0.0) -> int:
        """Requests seen matching verb/kind (None: any), stamped at or after `since` (`time.monotonic()`)."""
        return sum(
            1
            for r in self.requests
            if (verb is None or r.verb == verb) and (kind is None or r.kind == kind) and r.time >= since
        )

    def open_watches(self, kind: str | None = None) -> int:
        return sum(1 for w in self._watches if kind is None or w.kind.kind == kind)

    # ---------------------------------------------------------------- HTTP

    def _route(self, path: str) -> _Route | None:
        parts = [p for p in path.split("/") if p]
        if len(parts) >= 2 and parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return None
        if not rest:
            return None
        namespace: str | None = None
        if rest[0] == "namespaces" and len(rest) >= 3 and not (len(rest) == 3 and rest[2] in ("status", "finalize")):
            namespace, rest = rest[1], rest[2:]
        kind = self._kind(group, rest[0])
        if kind is None or version not in kind.versions:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else None
        subresource = rest[2] if len(rest) > 2 else ""
        return _Route(kind, version, namespace, name, subresource)

    @staticmethod
    def _verb(method: str, route: _Route | None, query: dict[str, str]) -> str:
        if route is None:
            return "discovery"
        if method == "GET":
            if route.name:
                return "get"
            return "watch" if query.get("watch", "").lower() in ("1", "true") else "list"
        return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method, method.lower())

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self._transports.add(request.transport)
        query = dict(request.query)
        record = RequestRecord(time.monotonic(), request.method, request.path, "", "", None, None, "", query)
        self.requests.append(record)
        try:
            if request.path == "/apis/authentication.k8s.io/v1/tokenreviews":
                record.verb = "tokenreview"
            else:
                route = self._route(request.path)
                record.verb = self._verb(request.method, route, query)
                if route is not None:
                    record.kind, record.namespace, record.name = route.kind.kind, route.namespace, route.name
                    record.subresource = route.subresource
            if self.required_token and request.headers.get("Authorization") != f"Bearer {self.required_token}":
                raise ApiError(401, "Unauthorized", "Unauthorized")
            for fault in self._faults:
                if fault.count > 0 and fault.verb in (None, record.verb) and fault.kind in (None, record.kind):
                    fault.count -= 1
                    headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
                    reason = {429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}.get(
                        fault.status, "InternalError"
                    )
                    raise ApiError(fault.status, reason, f"injected fault {fault.status}", details=headers)
            response = await handler(request)
        except ApiError as error:
            headers = {"Retry-After": error.details.pop("Retry-After")} if "Retry-After" in error.details else {}
            response = web.json_response(error.status(), status=error.code, headers=headers)
        except web.HTTPException as error:
            response = web.json_response(
                status_object(error.status, error.reason, error.text or error.reason), status=error.status
            )
        record.status = response.status
        return response

    async def _body(self, request: web.Request) -> Any:
        try:
            return json.loads(await request.read())
        except ValueError as error:
            raise ApiError(400, "BadRequest", f"the request body is not JSON: {error}") from None

    def _render(self, obj: Obj, route: _Route, *, with_type: bool = True) -> Obj:
        out = copy.deepcopy(obj)
        if with_type:
            out["apiVersion"] = route.kind.api_version(route.version)
            out["kind"] = route.kind.kind
        else:
            out.pop("apiVersion", None)
            out.pop("kind", None)
        return out

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path == "/apis/authentication.k8s.io/v1/tokenreviews" and request.method == "POST":
            return web.json_response(self._token_review(await self._body(request)), status=201)
        if request.method == "GET":
            discovery = self._discovery(path)
            if discovery is not None:
                return web.json_response(discovery)
        route = self._route(path)
        if route is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        query = dict(request.query)
        verb = self._verb(request.method, route, query)
        kind, store = route.kind, self.store
        if route.subresource and route.subresource != "status":
            raise ApiError(404, "NotFound", f"subresource {route.subresource} not supported")
        if route.subresource == "status" and not kind.status:
            raise ApiError(404, "NotFound", f"{kind.plural} have no status subresource")
        if verb == "watch":
            return await self._watch(request, route, query)
        if verb == "list":
            return web.json_response(self._list(route, query))
        if verb == "get":
            assert route.name is not None
            found = store.get(kind, route.namespace or "", route.name)
            if found is None:
                store._current(kind, route.namespace or "", route.name)  # raises NotFound
            assert found is not None
            return web.json_response(self._render(found, route))
        if verb == "create":
            obj = await self._body(request)
            self._check_body(obj, route)
            if route.namespace:
                obj.setdefault("metadata", {})["namespace"] = route.namespace
            return web.json_response(self._render(store.create(kind, obj), route), status=201)
        if verb in ("update", "patch", "delete") and not route.name:
            raise ApiError(405, "MethodNotAllowed", f"{verb} needs an object name")
        assert route.name is not None
        if verb == "update":
            obj = await self._body(request)
            self._check_body(obj, route)
            meta = obj.setdefault("metadata", {})
            if meta.get("name") != route.name:
                raise ApiError(400, "BadRequest", "the name of the object does not match the name on the URL")
            if kind.namespaced:
                meta["namespace"] = route.namespace
            return web.json_response(self._render(store.update(kind, obj, subresource=route.subresource), route))
        if verb == "patch":
            return web.json_response(self._render(await self._patch(request, route), route))
        if verb == "delete":
            body: Any = {}
            if request.can_read_body:
                raw = await request.read()
                body = json.loads(raw) if raw.strip() else {}
            gone = store.delete(kind, route.namespace or "", route.name, preconditions=body.get("preconditions"))
            return web.json_response(self._render(gone, route))
        raise ApiError(405, "MethodNotAllowed", f"{request.method} is not supported")

    @staticmethod
    def _check_body(obj: Any, route: _Route) -> None:
        if not isinstance(obj, dict):
            raise ApiError(400, "BadRequest", "the body must be a JSON object")
        expected = route.kind.api_version(route.version)
        if obj.get("kind") not in (None, route.kind.kind) or obj.get("apiVersion") not in (None, expected):
            raise ApiError(
                400,
                "BadRequest",
                f"the body is a {obj.get('apiVersion')} {obj.get('kind')}, not {expected} {route.kind.kind}",
            )

    async def _patch(self, request: web.Request, route: _Route) -> Obj:
        assert route.name is not None
        current = self.store._current(route.kind, route.namespace or "", route.name)
        patch = await self._body(request)
        content_type = request.content_type
        try:
            if content_type == "application/json-patch+json":
                patched = json_patch(current, patch)
            elif content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                patched = merge_patch(current, patch)
            else:
                raise ApiError(415, "UnsupportedMediaType", f"unsupported patch type {content_type}")
        except PatchError as error:
            raise ApiError(422, "Invalid", f"the patch cannot be applied: {error}") from None
        if not isinstance(patched, dict):
            raise ApiError(422, "Invalid", "the patched object is not an object")
        wanted_rv = (patch.get("metadata") or {}).get("resourceVersion") if isinstance(patch, dict) else None
        patched.setdefault("metadata", {})["resourceVersion"] = wanted_rv or current["metadata"]["resourceVersion"]
        return self.store.update(route.kind, patched, subresource=route.subresource)

    def _list(self, route: _Route, query: dict[str, str]) -> Obj:
        kind = route.kind
        match = _matcher(query)
        items = [obj for obj in self.store.list(kind, route.namespace) if match(obj)]
        list_rv = self.store.rv
        start = 0
        if query.get("continue"):
            try:
                token = json.loads(base64.b64decode(query["continue"]))
                list_rv, start = int(token["rv"]), int(token["start"])
            except (ValueError, KeyError, TypeError):
                raise ApiError(400, "BadRequest", "invalid continue token") from None
            if list_rv < self.store.horizon:
                raise ApiError(410, "Expired", "The provided continue parameter is too old")
        limit = int(query.get("limit") or 0)
        end = start + limit if limit > 0 else len(items)
        meta: Obj = {"resourceVersion": str(list_rv)}
        if end < len(items):
            meta["continue"] = base64.b64encode(json.dumps({"rv": list_rv, "start": end}).encode()).decode()
            meta["remainingItemCount"] = len(items) - end
        return {
            "kind": f"{kind.kind}List",
            "apiVersion": kind.api_version(route.version),
            "metadata": meta,
            "items": [self._render(obj, route, with_type=kind.crd) for obj in items[start:end]],
        }

    async def _watch(self, request: web.Request, route: _Route, query: dict[str, str]) -> web.StreamResponse:
        kind = route.kind
        rv = query.get("resourceVersion", "")
        bookmarks = query.get("allowWatchBookmarks", "").lower() in ("true", "1")
        timeout = float(query.get("timeoutSeconds") or 1800)
        match = _matcher(query)
        initial: list[Event] = []
        expired = False
        if rv in ("", "0"):
            initial = [Event(self.store.rv, kind, "ADDED", obj) for obj in self.store.list(kind, route.namespace)]
            initial = [e for e in initial if match(e.obj)]
        else:
            try:
                since = int(rv)
            except ValueError:
                raise ApiError(400, "BadRequest", f"invalid resourceVersion {rv!r}") from None
            if since < self.store.horizon:
                expired = True
            else:
                initial = [
                    e
                    for e in self.store.history
                    if e.rv > since
                    and e.kind.key == kind.key
                    and (not route.namespace or e.obj["metadata"].get("namespace") == route.namespace)
                    and match(e.obj)
                ]
        too_old = f"too old resource version: {rv} ({self.store.horizon})"
        if expired and self.expired_mode == "http":
            raise ApiError(410, "Expired", too_old)
        # Register before the first await, so no event falls between the replay and the live feed.
        watcher = Watcher(kind, route.namespace, match)
        open_watch = _OpenWatch(kind, watcher, request.transport)
        if not expired:
            self.store.watchers.add(watcher)
            self._watches.add(open_watch)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        try:
            await response.prepare(request)
            if expired:
                await self._write(response, {"type": "ERROR", "object": status_object(410, "Expired", too_old)})
                await response.write_eof()
                return response
            for event in initial:
                await self._write_event(response, route, event)
            deadline = time.monotonic() + timeout
            while (remaining := deadline - time.monotonic()) > 0:
                wait = min(remaining, self.bookmark_interval_s) if bookmarks else remaining
                try:
                    item = await asyncio.wait_for(watcher.queue.get(), timeout=wait)
                except TimeoutError:
                    if bookmarks and time.monotonic() < deadline:
                        await self._write_bookmark(response, route)
                    continue
                if isinstance(item, Event):
                    await self._write_event(response, route, item)
                elif item == "bookmark":
                    await self._write_bookmark(response, route)
                elif item == "garbage":
                    await response.write(b"this is not a watch event\n")
                elif item in ("drop", "drop-mid"):
                    if item == "drop-mid":
                        await response.write(b'{"type":"MODIFIED","object":{"kind":"')
                    if request.transport is not None:
                        request.transport.close()
                    return response
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.store.watchers.discard(watcher)
            self._watches.discard(open_watch)
        return response

    @staticmethod
    async def _write(response: web.StreamResponse, event: Obj) -> None:
        await response.write(json.dumps(event).encode() + b"\n")

    async def _write_event(self, response: web.StreamResponse, route: _Route, event: Event) -> None:
        await self._write(response, {"type": event.type, "object": self._render(event.obj, route)})

    async def _write_bookmark(self, response: web.StreamResponse, route: _Route) -> None:
        obj = {
            "kind": route.kind.kind,
            "apiVersion": route.kind.api_version(route.version),
            "metadata": {"resourceVersion": str(self.store.rv)},
        }
        await self._write(response, {"type": "BOOKMARK", "object": obj})

    def _token_review(self, review: Any) -> Obj:
        spec = review.get("spec") if isinstance(review, dict) else None
        if not isinstance(spec, dict) or not isinstance(spec.get("token"), str):
            raise ApiError(400, "BadRequest", "TokenReview: spec.token: Required value")
        identity = self.tokens.get(spec["token"])
        wanted = tuple(spec.get("audiences") or ())
        status: Obj
        if identity is None:
            status = {"authenticated": False, "error": "[invalid bearer token, token lookup failed]"}
        elif wanted and not set(wanted) & set(identity.audiences):
            status = {
                "authenticated": False,
                "error": f"[invalid bearer token, token audiences {list(wanted)} is invalid]",
            }
        else:
            status = {
                "authenticated": True,
                "user": {"username": identity.username, "uid": identity.uid, "groups": list(identity.groups)},
                "audiences": list(wanted or identity.audiences),
            }
        return {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "metadata": {"creationTimestamp": None},
            "spec": spec,
            "status": status,
        }

    def _groups(self) -> dict[str, list[str]]:
        groups: dict[str, set[str]] = {}
        for kind in self.kinds():
            groups.setdefault(kind.group, set()).update(kind.versions)
        groups.setdefault("authentication.k8s.io", set()).add("v1")
        return {g: sorted(v, key=version_priority, reverse=True) for g, v in groups.items()}

    def _resources(self, group: str, version: str) -> Obj | None:
        kinds = [k for k in self.kinds() if k.group == group and version in k.versions]
        if not kinds and not (group == "authentication.k8s.io" and version == "v1"):
            return None
        verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
        resources: list[Obj] = []
        for kind in kinds:
            resources.append(
                {
                    "name": kind.plural,
                    "singularName": kind.kind.lower(),
                    "namespaced": kind.namespaced,
                    "kind": kind.kind,
                    "verbs": verbs,
                }
            )
            if kind.status:
                resources.append(
                    {
                        "name": f"{kind.plural}/status",
                        "singularName": "",
                        "namespaced": kind.namespaced,
                        "kind": kind.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
        if group == "authentication.k8s.io":
            resources.append(
                {
                    "name": "tokenreviews",
                    "singularName": "tokenreview",
                    "namespaced": False,
                    "kind": "TokenReview",
                    "verbs": ["create"],
                }
            )
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": resources,
        }

    def _discovery(self, path: str) -> Obj | None:
        parts = [p for p in path.split("/") if p]
        groups = self._groups()
        if parts == ["version"]:
            return {"major": "1", "minor": "31", "gitVersion": "v1.31.0-meshd-fake", "platform": "linux/amd64"}
        if parts == ["api"]:
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        if parts == ["api", "v1"]:
            return self._resources("", "v1")
        if parts == ["apis"]:
            return {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [self._group(name, versions) for name, versions in sorted(groups.items()) if name],
            }
        if len(parts) == 2 and parts[0] == "apis":
            if parts[1] not in groups:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return {"kind": "APIGroup", "apiVersion": "v1", **self._group(parts[1], groups[parts[1]])}
        if len(parts) == 3 and parts[0] == "apis":
            found = self._resources(parts[1], parts[2])
            if found is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return found
        return None

    @staticmethod
    def _group(name: str, versions: list[str]) -> Obj:
        entries = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
        return {"name": name, "versions": entries, "preferredVersion": entries[0]}
