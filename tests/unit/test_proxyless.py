"""Proxyless gRPC clients: how meshd recognises them (node metadata GENERATOR grpc, as Istio's agent
writes it), the bootstrap `meshd bootstrap --proxyless` prints, and what their snapshot holds."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from meshd.agent.grpc_bootstrap import build_grpc_bootstrap
from meshd.api.parse import parse_resource
from meshd.generate.generator import ConfigGenerator
from meshd.generate.options import GenerateOptions
from meshd.model.world import build_world
from meshd.translate.proxy import is_proxyless, parse_node_id
from meshd.xds.resource import CLUSTER, ENDPOINT, LISTENER, ROUTE

NODE = "sidecar~10.0.0.9~client.default~default.svc.cluster.local"


def test_generator_grpc_metadata_marks_a_proxyless_client() -> None:
    assert is_proxyless({"GENERATOR": "grpc", "NAMESPACE": "default"})
    assert not is_proxyless({"INTERCEPTION_MODE": "REDIRECT"})
    assert not is_proxyless({"GENERATOR": "envoy"})


def test_the_bootstrap_is_istios_proxyless_shape() -> None:
    config = build_grpc_bootstrap(node_id=NODE, xds_host="meshd", xds_port=15010, labels={"app": "client"})
    server = config["xds_servers"][0]
    assert server["server_uri"] == "meshd:15010" and server["server_features"] == ["xds_v3"]
    assert server["channel_creds"] == [{"type": "insecure"}]
    assert config["node"]["id"] == NODE
    assert config["node"]["metadata"]["GENERATOR"] == "grpc"
    assert config["node"]["metadata"]["NAMESPACE"] == "default"
    assert config["node"]["metadata"]["LABELS"] == {"app": "client"}


def test_meshd_bootstrap_proxyless_prints_it_and_refuses_a_bad_node_id() -> None:
    base = [sys.executable, "-m", "meshd", "bootstrap", "--proxyless", "--xds-address", "127.0.0.1:15010"]
    done = subprocess.run([*base, "--node-id", NODE], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout)["node"]["metadata"]["GENERATOR"] == "grpc"
    bad = subprocess.run([*base, "--node-id", "not-a-node"], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "meshd bootstrap:" in bad.stderr and "4 '~'-separated parts" in bad.stderr


def _world() -> object:
    docs = [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo", "namespace": "default"},
         "spec": {"ports": [{"name": "grpc", "port": 7070}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "echo-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "echo"}},
         "ports": [{"name": "grpc", "port": 7070}], "endpoints": [{"addresses": ["10.0.0.1"]}]},
        {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
         "metadata": {"name": "ext", "namespace": "default"},
         "spec": {"hosts": ["api.example.com"], "resolution": "DNS",
                  "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}]}},
    ]  # fmt: skip
    return build_world([parse_resource(d) for d in docs], domain_suffix="cluster.local")


def test_a_proxyless_snapshot_is_grpcs_view_only() -> None:
    generator = ConfigGenerator(_world(), options=GenerateOptions(), check=True)  # type: ignore[arg-type]
    proxy = dataclasses.replace(parse_node_id(NODE), proxyless=True)
    snapshot = generator.snapshot(proxy)
    listeners = {r.name: r for r in snapshot.select(LISTENER, None)}
    assert set(listeners) == {
        "echo.default.svc.cluster.local:7070",
        "echo.default.svc:7070",
        "echo.default:7070",
        "echo:7070",
    }  # no virtualOutbound, no bound listener, nothing for the DNS ServiceEntry
    listener = listener_pb2.Listener()
    listeners["echo:7070"].to_any().Unpack(listener)
    hcm = hcm_pb2.HttpConnectionManager()
    listener.api_listener.api_listener.Unpack(hcm)
    assert hcm.rds.route_config_name == "echo.default.svc.cluster.local:7070"
    assert [f.name for f in hcm.http_filters] == ["envoy.filters.http.fault", "envoy.filters.http.router"]
    assert [r.name for r in snapshot.select(ROUTE, None)] == ["echo.default.svc.cluster.local:7070"]
    assert [r.name for r in snapshot.select(CLUSTER, None)] == ["outbound|7070||echo.default.svc.cluster.local"]
    assert [r.name for r in snapshot.select(ENDPOINT, None)] == ["outbound|7070||echo.default.svc.cluster.local"]
    # a sidecar of the same namespace gets Envoy's view as before
    sidecar = generator.snapshot(parse_node_id(NODE))
    assert "echo:7070" not in {r.name for r in sidecar.select(LISTENER, None)}
