"""meshd: a Kubernetes-native service-mesh control plane serving Istio config to Envoy over xDS."""

__version__ = "0.1.0"

from meshd.lazy_kube_client import install as _install_lazy_kube_client

_install_lazy_kube_client()  # before any meshd module imports kubernetes_asyncio: see lazy_kube_client.py
