"""pytest fixtures for a real Kubernetes control plane (tests/kubereal/control_plane.py), available to every
test (tests/conftest.py): `real_kube` is one etcd + kube-apiserver for the whole session, with the chart's CRDs
installed; `real_kube_controllers` adds kube-controller-manager (the EndpointSlice controller). Without
KUBEBUILDER_ASSETS they skip, naming the variable. Tests share the cluster: each uses namespaces of its own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.kubereal.control_plane import ControlPlane, assets_unavailable, install_crds
from tests.unit.deploy.chart import render


def install_chart_crds(plane: ControlPlane) -> list[str]:
    """The chart's CRDs (tools/gencrds.py output, rendered by Helm; the Gateway API's too) created and
    Established."""
    docs = render({"crds": {"gatewayApi": True}})
    return install_crds(plane, [d for d in docs if d["kind"] == "CustomResourceDefinition"])


@pytest.fixture(scope="session")
def real_kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    why = assets_unavailable()
    if why is not None:
        pytest.skip(why)
    plane = ControlPlane(tmp_path_factory.mktemp("envtest"))
    try:
        plane.start()
        install_chart_crds(plane)
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def real_kube_controllers(real_kube: ControlPlane) -> ControlPlane:
    real_kube.start_controllers()
    return real_kube
