"""The node agent's side of EnvoyFilter BOOTSTRAP patches: the agent's own bootstrap patched, each candidate
checked by the real Envoy (`envoy --mode validate`), a filter Envoy refuses left out and named in the NACK;
the bootstrap node is marked; the agent's stream is not an Envoy to istioctl."""

from __future__ import annotations

import logging
import pathlib
import shutil
import tempfile

from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap
from google.protobuf import json_format

from meshd.agent.bootstrap_patches import BootstrapPatches, envoy_validator
from meshd.agent.envoy import default_envoy_path
from meshd.agent.run import agent_bootstrap
from meshd.settings import AgentSettings
from meshd.translate.envoyfilter.bootstrap import AGENT_METADATA, BOOTSTRAP_PATCH
from meshd.translate.proxy import parse_node_id
from meshd.xds.debug_types import syncz
from meshd.xds.hub import Connection, Hub
from meshd.xds.stream import DeltaStream


def _patch(value: dict[str, object]) -> bytes:
    return json_format.ParseDict(value, Bootstrap()).SerializeToString()


async def _no_channel() -> object:
    raise AssertionError("not used")


async def test_envoy_refused_filters_are_left_out_and_named() -> None:
    tmp_path = pathlib.Path(tempfile.mkdtemp(prefix="efb-", dir="/tmp"))  # the SDS socket path fits in 108 bytes
    settings = AgentSettings(pod="a", workdir=tmp_path, xds_plaintext=True, bootstrap_patches=True)
    base = agent_bootstrap(settings)
    assert base["node"]["metadata"][AGENT_METADATA] == "true"
    patches = BootstrapPatches(
        base=base,
        channel=_no_channel,  # type: ignore[arg-type]
        validate=envoy_validator(envoy_path=default_envoy_path(), work_dir=tmp_path),
        log=logging.getLogger("test"),
    )
    runtime = {"layered_runtime": {"layers": [{"name": "ef", "static_layer": {"k": "v"}}]}}
    duplicate = {"static_resources": {"clusters": [{"name": "xds-grpc", "type": "STATIC"}]}}
    error = await patches.handle({"0/ns/good/0": _patch(runtime), "1/ns/dup/0": _patch(duplicate)})
    assert error is not None and "'1/ns/dup/0' (EnvoyFilter ns/dup)" in error and "duplicate cluster" in error, error
    assert "good" not in error
    assert patches.applied == ("0/ns/good/0",)
    assert [layer["name"] for layer in patches.current["layered_runtime"]["layers"]] == ["static", "admin", "ef"]
    assert [c["name"] for c in patches.current["static_resources"]["clusters"]].count("xds-grpc") == 1
    # no patch at all: the agent's bootstrap exactly as it wrote it, accepted
    assert await patches.handle({}) is None
    assert patches.current == base and patches.received.is_set()
    shutil.rmtree(tmp_path, ignore_errors=True)


async def test_an_agent_bootstrap_envoy_refuses_anyway_does_not_blame_the_patches() -> None:
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="efb-" + "x" * 80, dir="/tmp"))  # the SDS socket path: too long
    base = agent_bootstrap(AgentSettings(pod="a", workdir=workdir, xds_plaintext=True, bootstrap_patches=True))
    patches = BootstrapPatches(
        base=base,
        channel=_no_channel,  # type: ignore[arg-type]
        validate=envoy_validator(envoy_path=default_envoy_path(), work_dir=workdir),
        log=logging.getLogger("test"),
    )
    runtime = {"layered_runtime": {"layers": [{"name": "ef", "static_layer": {"k": "v"}}]}}
    assert await patches.handle({"0/ns/good/0": _patch(runtime)}) is None
    assert patches.applied == ("0/ns/good/0",)
    shutil.rmtree(workdir, ignore_errors=True)


def test_a_node_agents_patch_stream_is_not_listed_as_a_proxy() -> None:
    hub = Hub()
    proxy = parse_node_id("sidecar~10.0.0.1~a.default~default.svc.cluster.local")
    stream = DeltaStream(nonce_prefix="x")
    stream.state(BOOTSTRAP_PATCH)
    agent = hub.connect(proxy=proxy, stream=stream, now=0.0)
    assert agent.agent_only and hub.find("a.default") is None
    assert syncz(hub, cluster_id="Kubernetes") == []
    envoy = hub.connect(proxy=proxy, stream=DeltaStream(nonce_prefix="y"), now=0.0)
    assert isinstance(envoy, Connection) and not envoy.agent_only and hub.find("a.default") is envoy
