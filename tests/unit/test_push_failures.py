"""No input stops meshd (issue 20, item 2, defence in depth): a build that raises for one proxy leaves
that proxy its last good snapshot while every other proxy is updated; a generation that raises leaves
the hub serving the last good generation. Both are reported (log, metric, /debug/config_errors) and
meshd recovers by itself once the input is gone. Translation is made to raise by a monkeypatched
translate function (validation now refuses the inputs that used to)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import meshd.generate.outbound as outbound
from meshd.api.parse import parse_resource
from meshd.clock import SystemClock
from meshd.generate.checks import WorldChecks
from meshd.model.store import ConfigStore
from meshd.obs.metrics import Metrics
from meshd.push.loop import PushLoop
from meshd.settings import Settings
from meshd.translate.proxy import parse_node_id
from meshd.xds.hub import Connection, Hub
from meshd.xds.resource import CLUSTER
from meshd.xds.stream import SotwStream

log = logging.getLogger("meshd.test.push_failures")


def _service(name: str, namespace: str = "a") -> Any:
    return parse_resource(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"ports": [{"name": "http", "port": 80}]},
        }
    )


class Mesh:
    def __init__(self) -> None:
        self.store, self.hub = ConfigStore(), Hub()
        self.metrics = Metrics(CollectorRegistry())
        self.loop = PushLoop(
            store=self.store, hub=self.hub, settings=Settings(), clock=SystemClock(), metrics=self.metrics, log=log
        )
        self.now = 0.0

    def set(self, *resources: Any) -> bool:
        self.store.replace_origin("test", {r.key: r for r in resources}, [])
        self.store.mark_loaded()
        self.now += 1.0
        return self.loop.push(changed_at=self.now)

    def connect(self, namespace: str) -> Connection:
        proxy = parse_node_id(
            f"sidecar~10.0.0.{len(self.hub.connections) + 1}~p.{namespace}~{namespace}.svc.cluster.local"
        )
        return self.hub.connect(proxy=proxy, stream=SotwStream(nonce_prefix=namespace), now=self.now)

    def failures(self, stage: str) -> float:
        return self.metrics.build_failures.get(stage)


def _clusters(conn: Connection) -> set[str]:
    assert conn.snapshot is not None
    return {r.name for r in conn.snapshot.select(CLUSTER, None)}


SIDECAR_B = parse_resource(  # proxies of namespace b see only their own namespace's services
    {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Sidecar",
        "metadata": {"name": "default", "namespace": "b"},
        "spec": {"egress": [{"hosts": ["./*"]}]},
    }
)


def _raise_for_bad(monkeypatch: pytest.MonkeyPatch) -> None:
    real = outbound.service_assignment_specs

    def translate(scope: Any, service: Any, ports: Any, **kwargs: Any) -> Any:
        if service.hostname.startswith("bad."):
            raise ValueError("Value out of range: -1")  # what protobuf said of `ports: {http: -1}`
        return real(scope, service, ports, **kwargs)

    monkeypatch.setattr(outbound, "service_assignment_specs", translate)


def test_one_proxy_failing_keeps_its_last_config_and_others_are_updated(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    mesh = Mesh()
    web, bad, api = _service("web"), _service("bad"), _service("api", "b")
    assert mesh.set(web, SIDECAR_B)
    a, b = mesh.connect("a"), mesh.connect("b")
    held = a.snapshot
    assert "outbound|80||web.a.svc.cluster.local" in _clusters(a)

    _raise_for_bad(monkeypatch)
    assert mesh.set(web, SIDECAR_B, bad, api)  # the generation is fine; proxy a (which sees bad) raises
    assert a.snapshot is held  # its last good config, still served
    assert "outbound|80||api.b.svc.cluster.local" in _clusters(b)  # the other proxy got its update
    assert b.push_pending
    assert mesh.failures("proxy") == 1
    (error,) = [e for e in mesh.loop.errors if e.field.startswith("proxy ")]
    assert a.proxy.node_id in error.field and "Value out of range: -1" in error.message
    assert any("event=proxy_build_failed" in r.getMessage() and "p.a" in r.getMessage() for r in caplog.records)

    # A new proxy whose config cannot be built is admitted and served nothing yet (never UNKNOWN).
    late = mesh.connect("a")
    assert late.snapshot is None and late.proxy.node_id in mesh.hub.failures

    mesh.set(web, SIDECAR_B, bad, api)  # the same failure again: reported, not counted twice
    assert mesh.failures("proxy") == 2 and a.snapshot is held  # proxy a once, the late proxy once

    monkeypatch.undo()  # the input is fixed: everything converges, the error goes away
    assert mesh.set(web, SIDECAR_B, bad, api)
    assert "outbound|80||bad.a.svc.cluster.local" in _clusters(a)
    assert "outbound|80||bad.a.svc.cluster.local" in _clusters(late)
    assert not mesh.hub.failures and not [e for e in mesh.loop.errors if e.field.startswith("proxy ")]


def test_a_generation_that_raises_leaves_the_last_good_one_served(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    mesh = Mesh()
    assert mesh.set(_service("web"))
    conn = mesh.connect("b")
    good, held = mesh.hub.generator, conn.snapshot

    def broken(self: WorldChecks, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("unhashable type: 'list'")

    monkeypatch.setattr(WorldChecks, "run", broken)
    assert not mesh.set(_service("web"), _service("bad"))  # raised inside, did not propagate
    assert mesh.hub.generator is good and conn.snapshot is held
    assert mesh.failures("generation") == 1
    (error,) = [e for e in mesh.loop.errors if e.field == "<generation>"]
    assert "TypeError: unhashable type: 'list'" in error.message
    assert mesh.metrics.registry.get_sample_value("meshd_config_errors") == 1.0
    assert any("event=generation_failed" in r.getMessage() for r in caplog.records)

    monkeypatch.undo()
    assert mesh.set(_service("web"), _service("bad"))
    assert mesh.hub.generator is not good
    assert "outbound|80||bad.a.svc.cluster.local" in _clusters(conn)
    assert not [e for e in mesh.loop.errors if e.field == "<generation>"]


def test_the_mesh_config_reaches_the_generation_options() -> None:
    from meshd.api.mesh import parse_mesh_config

    mesh = Mesh()
    current = {"mesh": parse_mesh_config("")}
    mesh.loop.follow_mesh(lambda: current["mesh"])
    assert mesh.set(_service("web"))
    assert mesh.hub.generator is not None
    options = mesh.hub.generator.options  # type: ignore[attr-defined]
    assert options.mesh.path_normalization == "BASE"
    assert (options.root_namespace, options.trust_domain, options.gateway_trusted_proxies) == (
        "istio-system",
        "cluster.local",
        0,
    )
    current["mesh"] = parse_mesh_config(
        "pathNormalization: {normalization: NONE}\nrootNamespace: mesh-root\ntrustDomain: td.example\n"
        "defaultConfig: {gatewayTopology: {numTrustedProxies: 1}}\n"
    )
    mesh.store.touch()  # what the mesh config's source does on a change
    assert mesh.loop.push(changed_at=mesh.now + 1)
    options = mesh.hub.generator.options  # type: ignore[attr-defined]
    assert options.mesh.path_normalization == "NONE"
    assert (options.root_namespace, options.trust_domain, options.gateway_trusted_proxies) == (
        "mesh-root",
        "td.example",
        1,
    )
