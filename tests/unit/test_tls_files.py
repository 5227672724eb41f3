"""Certificate files a DestinationRule names must exist, and hold what Envoy loads, where the
(standalone) sidecar runs: a bad one is reported with its field and the clusters that would open it
are left out, so Envoy never rejects a cluster update; once the file is right, the next push serves
them."""

from __future__ import annotations

from typing import Any

from meshd.api.parse import parse_resource
from meshd.generate.generator import ConfigGenerator
from meshd.generate.options import GenerateOptions
from meshd.generate.tls_files import FileCheck
from meshd.model.state import WorldState
from meshd.translate.proxy import parse_node_id
from meshd.xds.resource import CLUSTER
from tests.certs import Authority

CA = Authority()
CLIENT, OTHER = CA.issue("client", client=True), CA.issue("other", client=True)

DOCS: list[dict[str, Any]] = [
    {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "ledger", "namespace": "default"},
        "spec": {"ports": [{"name": "http", "port": 80}]},
    },
    {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "ledger", "namespace": "default"},
        "spec": {
            "host": "ledger",
            "trafficPolicy": {
                "tls": {"mode": "MUTUAL", "clientCertificate": "/certs/c.pem", "privateKey": "/certs/k.pem"}
            },
            "subsets": [{"name": "plain", "labels": {"v": "1"}, "trafficPolicy": {"tls": {"mode": "DISABLE"}}}],
        },
    },
]
PROXY = parse_node_id("sidecar~10.0.0.1~client.default~default.svc.cluster.local")


def test_a_missing_certificate_file_leaves_its_clusters_out_until_it_exists() -> None:
    state = WorldState(domain_suffix="cluster.local")
    state.apply({r.key: r for r in (parse_resource(d) for d in DOCS)})
    world = state.world()
    files = {"/certs/c.pem": CLIENT.cert}

    def read(path: str) -> bytes | None:
        return files.get(path)

    generator = ConfigGenerator(
        world, options=GenerateOptions(inbound_port=15006, sidecar_endpoint_port=None), read_file=read
    )
    generator.precompute()
    (error,) = generator.errors
    assert (str(error.key), error.field) == ("DestinationRule default/ledger", "spec.trafficPolicy.tls.privateKey")
    assert "/certs/k.pem does not exist or cannot be read" in error.message
    clusters = generator.snapshot(PROXY).resources[CLUSTER]
    assert "outbound|80||ledger.default.svc.cluster.local" not in clusters
    assert "outbound|80|plain|ledger.default.svc.cluster.local" in clusters  # plaintext subset unaffected

    files["/certs/k.pem"] = OTHER.key  # not the certificate's key: still refused
    generator = ConfigGenerator(
        world,
        options=GenerateOptions(inbound_port=15006, sidecar_endpoint_port=None),
        read_file=read,
        previous=generator,
    )
    generator.precompute()
    (error,) = generator.errors
    assert error.field == "spec.trafficPolicy.tls.privateKey" and "does not match" in error.message
    assert "outbound|80||ledger.default.svc.cluster.local" not in generator.snapshot(PROXY).resources[CLUSTER]

    files["/certs/k.pem"] = CLIENT.key  # the next push (same World) reads it and serves the cluster
    generator = ConfigGenerator(
        world,
        options=GenerateOptions(inbound_port=15006, sidecar_endpoint_port=None),
        read_file=read,
        previous=generator,
    )
    generator.precompute()
    assert generator.errors == []
    assert "outbound|80||ledger.default.svc.cluster.local" in generator.snapshot(PROXY).resources[CLUSTER]


def test_files_are_not_checked_without_a_checker() -> None:
    state = WorldState(domain_suffix="cluster.local")
    state.apply({r.key: r for r in (parse_resource(d) for d in DOCS)})
    generator = ConfigGenerator(state.world(), options=GenerateOptions(inbound_port=15006, sidecar_endpoint_port=None))
    generator.precompute()
    assert generator.errors == []
    assert "outbound|80||ledger.default.svc.cluster.local" in generator.snapshot(PROXY).resources[CLUSTER]


def test_the_check_is_carried_while_its_inputs_and_files_are_the_same() -> None:
    """An endpoint change walks no rule again (the previous findings are taken whole); a file that changes
    under the same World is checked again."""
    state = WorldState(domain_suffix="cluster.local")
    state.apply({r.key: r for r in (parse_resource(d) for d in DOCS)})
    world = state.world()
    files = {"/certs/c.pem": CLIENT.cert}
    first = FileCheck(world, read=files.get)
    assert [e.field for e in first.errors] == ["spec.trafficPolicy.tls.privateKey"]
    pod = parse_resource(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p", "namespace": "default"},
            "status": {"podIP": "10.0.0.9"},
        }
    )
    state.apply({pod.key: pod})
    moved = state.world()
    assert moved.rules_by_host is world.rules_by_host  # derived in place: the inputs are the same objects
    carried = FileCheck(moved, read=files.get, previous=first)
    assert carried.errors is first.errors
    files["/certs/k.pem"] = CLIENT.key
    fixed = FileCheck(moved, read=files.get, previous=carried)
    assert fixed.errors == [] and fixed.missing(world.rules_by_host["ledger.default.svc.cluster.local"][0]) == set()
