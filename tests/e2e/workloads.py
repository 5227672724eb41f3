"""The Kubernetes YAML of a meshed workload as the e2e labs write it into meshd's config directory: a Service,
its one Pod (with a sidecar: the `security.istio.io/tlsMode: istio` label) and the EndpointSlice that puts the
Pod's address behind the Service. One place for what many labs declared word for word."""

from __future__ import annotations


def meshed_service_yaml(
    name: str,
    *,
    ip: str,
    namespace: str = "default",
    port: int = 9080,
    target: int = 8080,
    port_name: str = "http",
    service_account: str | None = None,
    selector: bool = False,
    sidecar: bool = True,
    target_ref: bool = True,
    slice_name: str | None = None,
) -> str:
    """Service `name` (`port` -> `target`), Pod `name` at `ip` labelled `app: name` (with `service_account`,
    and the sidecar's tlsMode label unless `sidecar=False`), EndpointSlice `slice_name` (default `name`)
    with the Pod's address (naming the Pod as its targetRef unless `target_ref=False`). `selector`: the
    Service selects `app: name`."""
    labels = f"app: {name}, security.istio.io/tlsMode: istio" if sidecar else f"app: {name}"
    pod_spec = f"spec: {{serviceAccountName: {service_account}}}\n" if service_account else ""
    service_selector = f"  selector: {{app: {name}}}\n" if selector else ""
    reference = f"  targetRef: {{kind: Pod, name: {name}, namespace: {namespace}}}\n" if target_ref else ""
    return f"""\
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {namespace}}}
spec:
{service_selector}  ports: [{{name: {port_name}, port: {port}, targetPort: {target}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {namespace}, labels: {{{labels}}}}}
{pod_spec}status: {{podIP: {ip}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {slice_name or name}, namespace: {namespace}, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: {port_name}, port: {target}}}]
endpoints:
- addresses: [{ip}]
{reference}"""
