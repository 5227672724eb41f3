"""Which version of a kind the cluster serves: built-in kinds have one; an Istio CRD is looked up in
API discovery in preference order (v1, then v1beta1, then v1alpha3). None when the CRD is absent."""

from __future__ import annotations

from meshd.kube.kinds import KindSpec
from meshd.kube.transport import KubeApiError, Transport


async def served_version(transport: Transport, spec: KindSpec) -> str | None:
    """Raises KubeApiError when discovery itself fails (the caller backs off); 404 means not served."""
    if not spec.crd:
        return spec.versions[0]
    for version in spec.versions:
        try:
            doc = await transport.get_json(f"/apis/{spec.group}/{version}")
        except KubeApiError as exc:
            if exc.status == 404:
                continue
            raise
        resources = doc.get("resources")
        if isinstance(resources, list) and any(isinstance(r, dict) and r.get("name") == spec.plural for r in resources):
            return version
    return None
