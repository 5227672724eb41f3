"""meshd: a Kubernetes-native service-mesh control plane serving Istio config to Envoy over xDS."""

__version__ = "0.1.0"
