"""Served-version discovery against the fake API server: Istio CRDs in preference order v1, v1beta1,
v1alpha3; None when the CRD is absent."""

from __future__ import annotations

from meshd.kube.discovery import served_version
from tests.unit.kube.conftest import Api
from tests.unit.kube.test_reflector import VS


async def test_the_most_preferred_served_version_is_used(api: Api) -> None:
    assert await served_version(api.transport, VS) == "v1"
    api.server.remove_crd("networking.istio.io", "VirtualService")
    api.server.install_crd("networking.istio.io", "VirtualService", ["v1alpha3", "v1beta1"])
    assert await served_version(api.transport, VS) == "v1beta1"
    api.server.remove_crd("networking.istio.io", "VirtualService")
    assert await served_version(api.transport, VS) is None
