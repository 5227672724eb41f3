"""Envoy bootstrap: node identity, ADS wiring, xds-grpc cluster, and Envoy's own validation."""

from __future__ import annotations

import json
import pathlib
import subprocess
from typing import Any

import pytest
import yaml

from meshd.agent.bootstrap import build_bootstrap, render
from meshd.agent.envoy import default_envoy_path

NODE_ID = "sidecar~127.0.10.2~catalog-v1.default~default.svc.cluster.local"


def _bootstrap(*, xds_host: str = "127.0.0.1", delta: bool = False) -> dict[str, Any]:
    return build_bootstrap(
        node_id=NODE_ID,
        cluster="catalog.default",
        xds_host=xds_host,
        xds_port=15010,
        admin_host="127.0.10.2",
        admin_port=15000,
        delta=delta,
    )


def test_node_and_ads() -> None:
    config = build_bootstrap(
        node_id=NODE_ID,
        cluster="catalog.default",
        xds_host="127.0.0.1",
        xds_port=15010,
        admin_host="127.0.10.2",
        admin_port=15000,
        delta=True,
        extra_metadata={"LABELS": {"app": "catalog"}},
    )
    assert config["node"]["metadata"]["NAMESPACE"] == "default"
    assert config["node"]["metadata"]["INSTANCE_IPS"] == "127.0.10.2"
    assert config["node"]["metadata"]["LABELS"] == {"app": "catalog"}
    ads = config["dynamic_resources"]["ads_config"]
    assert ads["api_type"] == "DELTA_GRPC"
    assert ads["grpc_services"] == [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]
    assert config["dynamic_resources"]["cds_config"] == {"ads": {}, "resource_api_version": "V3"}
    assert _bootstrap()["dynamic_resources"]["ads_config"]["api_type"] == "GRPC"


def test_xds_cluster_type_follows_host() -> None:
    static = _bootstrap()["static_resources"]["clusters"][0]
    dns = _bootstrap(xds_host="meshd.istio-system.svc")["static_resources"]["clusters"][0]
    assert (static["type"], dns["type"]) == ("STATIC", "STRICT_DNS")


def test_render_round_trips() -> None:
    config = _bootstrap()
    assert json.loads(render(config, fmt="json")) == config
    text = render(config, fmt="yaml")
    assert "&id" not in text  # no YAML anchors: what a person would write
    assert yaml.safe_load(text) == config
    with pytest.raises(ValueError, match="unknown bootstrap format"):
        render(config, fmt="toml")


@pytest.mark.parametrize(("delta", "fmt", "xds_host"), [(False, "json", "127.0.0.1"), (True, "yaml", "meshd")])
def test_envoy_accepts_it(tmp_path: pathlib.Path, delta: bool, fmt: str, xds_host: str) -> None:
    path = tmp_path / f"bootstrap.{fmt}"
    path.write_text(render(_bootstrap(xds_host=xds_host, delta=delta), fmt=fmt))
    result = subprocess.run(
        [default_envoy_path(), "--mode", "validate", "-c", str(path), "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
