"""Pure pieces of the agent: restart backoff and exit codes, when to rotate, CLI flags to settings."""

from __future__ import annotations

import datetime
import pathlib
import signal

import pytest

from meshd.agent.cli import _labels
from meshd.agent.supervisor import RestartPolicy, exit_code
from meshd.cli import build_parser
from tests.workload_pki import WorkloadCa


def test_backoff_doubles_and_is_capped() -> None:
    policy = RestartPolicy(base_s=0.5, max_s=3.0)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_exit_codes_as_a_shell_reports_them() -> None:
    assert exit_code(1) == 1
    assert exit_code(-signal.SIGKILL) == 137
    assert exit_code(0) == 0


def test_refresh_at_half_of_the_useful_life() -> None:
    cert = WorkloadCa().issue(spiffe="spiffe://cluster.local/ns/a/sa/b", ttl_s=10)
    assert cert.refresh_at(grace_ratio=0.5, received_at=cert.not_before) == cert.not_before + datetime.timedelta(
        seconds=5
    )
    # A CA that backdates not_before by a minute: the life counts from receipt, not from not_before.
    received = cert.not_before + datetime.timedelta(seconds=4)
    assert cert.refresh_at(grace_ratio=0.5, received_at=received) == received + datetime.timedelta(seconds=3)


def test_cli_flags() -> None:
    from meshd.agent.cli import settings_from_args

    args = build_parser().parse_args(
        [
            "agent", "--pod", "web-1", "--namespace", "shop", "--labels", "app=web,version=v1",
            "--cert-ttl", "5", "--envoy-arg=--foo", "--max-restarts", "2", "--workdir", "/tmp/w",
            "--pod-ports", "8080,9090",
        ]
    )  # fmt: skip
    settings = settings_from_args(args, env={"PATH": "/usr/bin", "POD_NAMESPACE": "ignored"})
    assert settings.labels == {"app": "web", "version": "v1"}
    # the agent's environment is what Envoy starts with (read here, at the command line, not deep inside)
    assert settings.envoy_environment == {"PATH": "/usr/bin", "POD_NAMESPACE": "ignored"}
    assert (settings.cert_ttl_s, settings.max_restarts, settings.envoy_args) == (5, 2, ("--foo",))
    assert settings.workdir == pathlib.Path("/tmp/w") and settings.pod_ports == (8080, 9090)
    assert settings.sds_socket == pathlib.Path("./var/run/secrets/workload-spiffe-uds/socket")
    assert not settings.bootstrap_patches
    # EnvoyFilter BOOTSTRAP patches: the flag, or Istio's proxyMetadata BOOTSTRAP_XDS_AGENT in the environment
    assert settings_from_args(
        build_parser().parse_args(["agent", "--pod", "a", "--bootstrap-patches"]), env={}
    ).bootstrap_patches
    args = build_parser().parse_args(["agent", "--pod", "a"])
    assert settings_from_args(args, env={"BOOTSTRAP_XDS_AGENT": "true"}).bootstrap_patches
    with pytest.raises(Exception, match="key=value"):
        _labels("app")
