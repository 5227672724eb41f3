"""A fake Kubernetes API server for tests (real wire protocol), and a small REST client for driving
scenarios against it or against a real cluster."""

from tests.kubeapi.client import KubeRest
from tests.kubeapi.server import FakeApiServer, RequestRecord, TokenIdentity

__all__ = ["FakeApiServer", "KubeRest", "RequestRecord", "TokenIdentity"]
