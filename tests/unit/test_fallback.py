"""A VirtualService or DestinationRule whose new version translation rejects (a reference that
does not resolve) leaves its previous version in effect, and the rejection is reported; once the
reference resolves, the new version takes over."""

from __future__ import annotations

import logging
import textwrap

from prometheus_client import CollectorRegistry

from meshd.api.meta import InvalidResource, ResourceKey
from meshd.model.fallback import LastAccepted
from meshd.model.store import ConfigStore
from meshd.obs.metrics import Metrics
from meshd.push.loop import PushLoop
from meshd.settings import Settings
from meshd.sources.yaml_file import parse_file
from meshd.translate.proxy import parse_node_id
from meshd.xds.hub import Hub
from meshd.xds.resource import ROUTE
from tests.unit.test_push import FakeClock

MESH = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {ports: [{name: http, port: 9080}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: default}
spec:
  host: web
  subsets: [{name: v1, labels: {version: v1}}%s]
"""


def _vs(subset: str) -> str:
    return textwrap.dedent(f"""\
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {{name: web, namespace: default}}
        spec:
          hosts: [web]
          http: [{{route: [{{destination: {{host: web, subset: {subset}}}}}]}}]
        """)


class Harness:
    def __init__(self) -> None:
        self.store = ConfigStore()
        self.loop = PushLoop(
            store=self.store, hub=Hub(), settings=Settings(), clock=FakeClock(), metrics=Metrics(CollectorRegistry()),
            log=logging.getLogger("test"),
        )  # fmt: skip

    def load(self, origin: str, text: str) -> None:
        parse_file(text, origin=origin).apply(self.store, origin=origin)

    def routed_cluster(self) -> str:
        generator = self.loop.rebuild(changed_at=0.0)
        proxy = parse_node_id("sidecar~10.0.0.9~client.default~default.svc.cluster.local")
        (config,) = generator.snapshot(proxy).select(ROUTE, frozenset({"9080"}))
        text = config.to_any().value
        return next(c for c in ("outbound|9080|v1|", "outbound|9080|v2|", "outbound|9080||") if c.encode() in text)


def test_a_rejected_new_version_keeps_the_previous_one_until_its_reference_resolves() -> None:
    h = Harness()
    h.load("mesh.yaml", MESH % "")
    h.load("vs.yaml", _vs("v1"))
    assert h.routed_cluster() == "outbound|9080|v1|"
    assert h.loop.errors == []

    h.load("vs.yaml", _vs("v2"))  # v2 is not defined by the DestinationRule
    assert h.routed_cluster() == "outbound|9080|v1|"  # not the default route: the previous version
    (err,) = h.loop.errors
    assert (err.key, err.field) == (
        ResourceKey("VirtualService", "default", "web"),
        "spec.http[0].route[0].destination.subset",
    )
    assert "subset 'v2' is not defined" in err.message and "the previous version stays in effect" in err.message

    h.load("mesh.yaml", MESH % ", {name: v2, labels: {version: v2}}")  # now it resolves
    assert h.routed_cluster() == "outbound|9080|v2|"
    assert h.loop.errors == []


def test_a_first_version_that_is_rejected_has_nothing_to_fall_back_to() -> None:
    h = Harness()
    h.load("mesh.yaml", MESH % "")
    h.load("vs.yaml", _vs("v2"))
    assert h.routed_cluster() == "outbound|9080||"  # the service's default route
    (err,) = h.loop.errors
    assert "previous version" not in err.message
    # the rule gains v2: the same version, rejected until now, is accepted without changing...
    h.load("mesh.yaml", MESH % ", {name: v2, labels: {version: v2}}")
    assert h.routed_cluster() == "outbound|9080|v2|"
    # ...so it is what a rejected newer version falls back to
    h.load("vs.yaml", _vs("v3"))
    assert h.routed_cluster() == "outbound|9080|v2|"


def test_deleting_a_resource_forgets_its_accepted_version() -> None:
    h = Harness()
    h.load("mesh.yaml", MESH % "")
    h.load("vs.yaml", _vs("v1"))
    assert h.routed_cluster() == "outbound|9080|v1|"
    h.store.remove_origin("vs.yaml")
    assert h.routed_cluster() == "outbound|9080||"
    h.load("vs.yaml", _vs("v2"))
    assert h.routed_cluster() == "outbound|9080||"


def test_a_substitution_that_is_rejected_too_is_not_tried_again() -> None:
    fallback = LastAccepted()
    key = ResourceKey("VirtualService", "default", "web")
    old, new = parse_file(_vs("v1"), origin="a"), parse_file(_vs("v2"), origin="a")
    fallback.observe(old.resources)
    fallback.settle([])
    fallback.observe(new.resources)
    err = InvalidResource(key, "spec.hosts", "rejected")
    assert fallback.substitutions([err]) == {key: old.resources[key]}
    fallback.failed([key])
    assert fallback.substitutions([err]) == {}
