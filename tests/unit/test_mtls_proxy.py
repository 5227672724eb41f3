"""Which proxies get Istio mTLS: those whose agent serves them a workload certificate over SDS (node
metadata `SDS: "true"`, which `meshd agent` sets when it obtains certificates)."""

from __future__ import annotations

import pathlib

from meshd.agent.run import agent_bootstrap
from meshd.settings import AgentSettings
from meshd.translate.proxy import has_sds


def _settings(**overrides: object) -> AgentSettings:
    values: dict[str, object] = {"pod": "web-1", "ip": "127.0.10.5", "workdir": pathlib.Path("/tmp/agent-x")}
    values.update(overrides)
    return AgentSettings.model_validate(values)


def test_sds_flag_in_node_metadata() -> None:
    assert has_sds({"SDS": "true"}) and has_sds({"SDS": True}) and has_sds({"SDS": "True"})
    assert not has_sds({}) and not has_sds({"SDS": "false"}) and not has_sds({"ISTIO_VERSION": "1.22"})


def test_agent_declares_sds_only_when_it_obtains_certificates() -> None:
    plain = agent_bootstrap(_settings())["node"]["metadata"]
    assert not has_sds(plain)
    with_ca = agent_bootstrap(_settings(token_file=pathlib.Path("/var/run/token")))["node"]["metadata"]
    assert has_sds(with_ca)
    forced = agent_bootstrap(_settings(), certificates=True)["node"]["metadata"]
    assert has_sds(forced)
