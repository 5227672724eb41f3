"""TCP services sharing a port, as in every Kubernetes cluster running meshd: `kubernetes.default:443` and
meshd's own Service on 443. Captured proxies (how injected pods run) tell them apart by destination address
and serve both: no rejection. Proxies without capture have one listener per port and serve only the oldest:
that is still reported, as a warning naming the consequence."""

from __future__ import annotations

from typing import Any

from meshd.api.parse import parse_resource
from meshd.generate.generator import ConfigGenerator
from meshd.generate.options import GenerateOptions
from meshd.model.world import World, build_world
from meshd.translate.proxy import parse_node_id
from meshd.xds.resource import LISTENER

KUBERNETES = "outbound|443||kubernetes.default.svc.cluster.local"
MESHD = "outbound|443||meshd.istio-system.svc.cluster.local"


def _service(name: str, namespace: str, ip: str, created: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": created},
            "spec": {"clusterIP": ip, "ports": [{"name": "https", "port": 443, "targetPort": 6443}]}}  # fmt: skip


def _world() -> World:
    docs = [
        _service("kubernetes", "default", "10.96.0.1", "2026-01-01T00:00:00Z"),
        _service("meshd", "istio-system", "10.96.0.10", "2026-01-02T00:00:00Z"),
    ]
    return build_world([parse_resource(d) for d in docs], domain_suffix="cluster.local")


def _generator() -> ConfigGenerator:
    generator = ConfigGenerator(
        _world(), options=GenerateOptions(inbound_port=15006, sidecar_endpoint_port=15006), check=True
    )
    generator.precompute()  # the per-World checks (generate/checks.py), as every push runs them
    return generator


def _listeners(generator: ConfigGenerator, *, capture: bool) -> dict[str, bytes]:
    proxy = parse_node_id("sidecar~10.0.0.2~web-1.shop~shop.svc.cluster.local")
    snap = generator.snapshot(proxy.__class__(**{**proxy.__dict__, "capture": capture}))
    return {name: r.body for name, r in snap.resources[LISTENER].items()}


def test_kubernetes_default_and_meshd_on_443_are_no_rejection_for_captured_proxies() -> None:
    generator = _generator()
    captured = _listeners(generator, capture=True)
    assert generator.errors and [e for e in generator.errors if e.severity != "warning"] == [], generator.errors
    outbound = captured["0.0.0.0_443"]
    assert KUBERNETES.encode() in outbound and MESHD.encode() in outbound  # both served, told apart by address


def test_a_proxy_without_capture_still_hears_of_the_collision() -> None:
    generator = _generator()
    bound = _listeners(generator, capture=False)["10.0.0.2_443"]
    assert KUBERNETES.encode() in bound and MESHD.encode() not in bound  # one listener: the oldest service
    [warning] = generator.errors
    assert warning.severity == "warning" and str(warning.key) == "Service istio-system/meshd", warning
    assert warning.message == (
        "TCP port 443 is already used by kubernetes.default.svc.cluster.local: not served to proxies without "
        "traffic capture (captured proxies tell the services apart by address)"
    )


def test_the_config_errors_gauge_counts_errors_not_warnings() -> None:
    """meshd_config_errors stays 0 in a cluster whose only finding is the shared port 443 warning."""
    import logging

    from prometheus_client import CollectorRegistry

    from meshd.model.store import ConfigStore
    from meshd.obs.metrics import Metrics
    from meshd.push.loop import PushLoop
    from meshd.settings import Settings
    from meshd.xds.hub import Hub
    from tests.unit.test_push import FakeClock

    store, metrics = ConfigStore(), Metrics(CollectorRegistry())
    loop = PushLoop(store=store, hub=Hub(), settings=Settings(), clock=FakeClock(), metrics=metrics,
                    log=logging.getLogger("test"))  # fmt: skip
    docs = [_service("kubernetes", "default", "10.96.0.1", "2026-01-01T00:00:00Z"),
            _service("meshd", "istio-system", "10.96.0.10", "2026-01-02T00:00:00Z")]  # fmt: skip
    store.replace_origin("f.yaml", {r.key: r for r in (parse_resource(d) for d in docs)})
    loop.rebuild(changed_at=0.0)
    assert [e.severity for e in loop.errors] == ["warning"]
    assert metrics.registry.get_sample_value("meshd_config_errors") == 0
