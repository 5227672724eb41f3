"""The agent's bootstrap: Istio node metadata, the sds-grpc cluster on the Unix socket, xds-grpc over
mTLS with the SDS secrets `default` and `ROOTCA`; accepted by `envoy --mode validate`."""

from __future__ import annotations

import json
import pathlib
import subprocess
from typing import Any

import pytest

from meshd.agent.metadata import node_id
from meshd.agent.run import agent_bootstrap, split_address
from meshd.settings import AgentSettings


def _settings(**overrides: Any) -> AgentSettings:
    values: dict[str, Any] = {
        "pod": "web-7f9c-abcde",
        "namespace": "shop",
        "ip": "127.0.10.5",
        "service_account": "web-sa",
        "labels": {"app": "web", "version": "v2"},
        "pod_ports": (8080, 9090),
        "xds_address": "meshd.istio-system.svc:15012",
        "workdir": pathlib.Path("/tmp/agent-x"),
    }
    values.update(overrides)
    return AgentSettings.model_validate(values)


def _bootstrap(**overrides: Any) -> dict[str, Any]:
    return agent_bootstrap(_settings(**overrides))


def test_node_identity_and_istio_metadata() -> None:
    config = _bootstrap()
    assert config["node"]["id"] == "sidecar~127.0.10.5~web-7f9c-abcde.shop~shop.svc.cluster.local"
    assert config["node"]["cluster"] == "web.shop"
    metadata = config["node"]["metadata"]
    assert {k: metadata[k] for k in ("NAMESPACE", "NAME", "SERVICE_ACCOUNT", "INSTANCE_IPS", "WORKLOAD_NAME")} == {
        "NAMESPACE": "shop",
        "NAME": "web-7f9c-abcde",
        "SERVICE_ACCOUNT": "web-sa",
        "INSTANCE_IPS": "127.0.10.5",
        "WORKLOAD_NAME": "web",
    }
    assert metadata["LABELS"] == {"app": "web", "version": "v2"}
    assert metadata["CLUSTER_ID"] == "Kubernetes" and metadata["MESH_ID"] == "cluster.local"
    assert metadata["ISTIO_VERSION"].startswith("meshd-")
    assert json.loads(metadata["POD_PORTS"]) == [
        {"containerPort": 8080, "protocol": "TCP"},
        {"containerPort": 9090, "protocol": "TCP"},
    ]
    assert metadata["PILOT_SAN"] == ["istiod.istio-system.svc"]
    assert metadata["ENVOY_STATUS_PORT"] == 15021
    assert metadata["OWNER"] == "kubernetes://apis/apps/v1/namespaces/shop/deployments/web"


def test_sds_cluster_is_the_unix_socket() -> None:
    clusters = {c["name"]: c for c in _bootstrap()["static_resources"]["clusters"]}
    endpoint = clusters["sds-grpc"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"] == {"pipe": {"path": "/tmp/agent-x/var/run/secrets/workload-spiffe-uds/socket"}}
    options = clusters["sds-grpc"]["typed_extension_protocol_options"]
    assert "http2_protocol_options" in next(iter(options.values()))["explicit_http_config"]


def test_xds_over_mtls_uses_sds_secrets() -> None:
    xds = {c["name"]: c for c in _bootstrap()["static_resources"]["clusters"]}["xds-grpc"]
    assert xds["type"] == "STRICT_DNS"
    tls = xds["transport_socket"]["typed_config"]
    assert tls["sni"] == "istiod.istio-system.svc"
    common = tls["common_tls_context"]
    assert [c["name"] for c in common["tls_certificate_sds_secret_configs"]] == ["default"]
    combined = common["combined_validation_context"]
    assert combined["validation_context_sds_secret_config"]["name"] == "ROOTCA"
    assert combined["default_validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "istiod.istio-system.svc"}}
    ]
    source = combined["validation_context_sds_secret_config"]["sds_config"]["api_config_source"]
    assert source["grpc_services"] == [{"envoy_grpc": {"cluster_name": "sds-grpc"}}]
    assert source["api_type"] == "GRPC"


def test_plaintext_xds_has_no_transport_socket() -> None:
    config = _bootstrap(xds_plaintext=True, xds_address="127.0.0.1:15010")
    xds = config["static_resources"]["clusters"][0]
    assert "transport_socket" not in xds and xds["type"] == "STATIC"
    assert "PILOT_SAN" not in config["node"]["metadata"]


def test_addresses() -> None:
    assert split_address("meshd:15012") == ("meshd", 15012)
    assert split_address("[::1]:15010") == ("::1", 15010)
    with pytest.raises(ValueError, match="host:port"):
        split_address("meshd")
    assert node_id(_settings(domain_suffix="corp.example")).endswith("shop.svc.corp.example")


@pytest.mark.parametrize(
    "overrides",
    [{}, {"delta": True, "sds_delta": True}, {"xds_plaintext": True, "xds_address": "127.0.0.1:15010"}],
    ids=["mtls", "delta", "plaintext"],
)
def test_envoy_accepts_it(tmp_path: pathlib.Path, overrides: dict[str, Any]) -> None:
    from meshd.agent.envoy import default_envoy_path

    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(_bootstrap(**overrides)))
    result = subprocess.run(
        [default_envoy_path(), "--mode", "validate", "-c", str(path), "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
