"""The Kubernetes source: turns the reflectors' object changes into ConfigStore changes, one store
origin per object (`kube:<Kind>/<namespace>/<name>`), so one object change touches one key.

- Objects are parsed with the same models as the YAML path (`parse_resource`); an invalid object
  becomes an InvalidResource error of its origin (shown at /debug/config_errors) and its last valid
  version, if any, stays in effect.
- Namespaces (also stored, with their labels only), Nodes and the `istio` ConfigMap are inputs: the mesh config's
  `discoverySelectors` decide which namespaces count (a namespace relabelled in or out brings its
  objects in or takes them out), and a Pod gets its Node's topology labels (region, zone, subzone)
  when it has none of its own, as Istio adds them to a workload's labels (locality).
- Secrets are stored for DestinationRule `credentialName` (served only to proxies of their own
  namespace); one that is not usable TLS material is simply absent (never an error of its own), and
  meshd's CA keys (`istio-ca-secret`, `cacerts` in meshd's namespace) are never stored.
- ConfigMaps holding a `ca.crt` are stored for BackendTLSPolicy `caCertificateRefs` (one whose `ca.crt` is not
  PEM certificates is absent, as an unusable Secret is); the others are not kept.
- Kinds meshd does not translate (e.g. Gateway) stay in the reflector caches.
- A change of only status, resourceVersion and managedFields (a status write: meshd's own come back
  so, one per object it reports on) is not parsed again unless the kind's model reads its status (Pods,
  Services): the store's copy takes the new resourceVersion (`ConfigStore.take_version`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from meshd.api.mesh import MESH_FIELD, InvalidMeshConfig, MeshConfig, mesh_warnings, parse_mesh_config
from meshd.api.meta import InvalidResource, ResourceKey
from meshd.api.parse import is_refused_kind, is_supported, parse_resource
from meshd.kube.kinds import MESH_CONFIGMAP, PRIVATE_SECRETS
from meshd.kube.reflector import Handler, Obj, meta
from meshd.model.services import REGION_LABEL, SUBZONE_LABEL, ZONE_LABEL
from meshd.model.store import ConfigStore

TOPOLOGY_LABELS = (REGION_LABEL, ZONE_LABEL, SUBZONE_LABEL)
ObjectId = tuple[str, str, str]  # (kind, namespace, name)
READS_STATUS = frozenset({"Pod", "Service"})  # the kinds whose models read their status (api/kube.py)
_WRITE_STAMPS = ("resourceVersion", "managedFields")  # metadata any write moves


def _same_but_status(old: Obj, new: Obj) -> bool:
    """Whether `new` differs from `old` only in status, resourceVersion and managedFields: what a status
    write changes (meshd's own come back so, one per object it reports on)."""
    if old.keys() - {"status"} != new.keys() - {"status"}:
        return False
    if any(old[k] != v for k, v in new.items() if k not in ("status", "metadata")):
        return False
    before, after = meta(old), meta(new)
    return {k: v for k, v in before.items() if k not in _WRITE_STAMPS} == {
        k: v for k, v in after.items() if k not in _WRITE_STAMPS
    }


def origin_of(object_id: ObjectId) -> str:
    kind, namespace, name = object_id
    return f"kube:{kind}/{namespace}/{name}"


def _holds_ca(obj: Obj) -> bool:
    data = obj.get("data")
    return isinstance(data, dict) and "ca.crt" in data


def _labels(obj: Obj | None) -> dict[str, str]:
    labels = meta(obj).get("labels") if obj is not None else None
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}


class KubeSource:
    def __init__(
        self, *, store: ConfigStore, namespace: str, log: logging.Logger, trust_domain: str = "cluster.local"
    ) -> None:
        self._store = store
        self._namespace = namespace
        self._trust_domain = trust_domain  # the one meshd's CA issues identities in
        self._log = log
        self.mesh = MeshConfig(root_namespace=namespace, trust_domain=trust_domain)
        self.mesh_error: InvalidResource | None = None
        self._objects: dict[ObjectId, Obj] = {}
        self._in_namespace: dict[str, set[ObjectId]] = defaultdict(set)
        self._namespace_labels: dict[str, dict[str, str]] = {}
        self._node_labels: dict[str, dict[str, str]] = {}
        self._pods_on_node: dict[str, set[ObjectId]] = defaultdict(set)

    def handler(self, kind: str) -> Handler:
        def on_change(_: str, old: Obj | None, new: Obj | None) -> None:
            if kind == "Namespace":
                self._on_namespace(old, new)
            elif kind == "Node":
                self._on_node(old, new)
            elif kind == "ConfigMap" and self._is_mesh_configmap(new if new is not None else old):
                self._on_configmap(new)
            else:
                self._on_object(kind, old, new)

        return on_change

    def _is_mesh_configmap(self, obj: Obj | None) -> bool:
        m = meta(obj) if obj is not None else {}
        return m.get("namespace") == self._namespace and m.get("name") == MESH_CONFIGMAP

    def mark_synced(self) -> None:
        """Every reflector has listed once: the store holds the whole cluster."""
        self._store.mark_loaded()

    # -- mesh objects -----------------------------------------------------------------------

    def _on_object(self, kind: str, old: Obj | None, new: Obj | None) -> None:
        current = new if new is not None else old
        if current is None:
            return
        m = meta(current)
        object_id = (kind, str(m.get("namespace") or ""), str(m.get("name") or ""))
        node_before = self._node_of(self._objects.get(object_id))
        if new is None:
            self._objects.pop(object_id, None)
            self._in_namespace[object_id[1]].discard(object_id)
        else:
            if not (is_supported(new) or is_refused_kind(new)) or self._private(object_id):
                return
            if kind == "ConfigMap" and not _holds_ca(new):  # only the CAs BackendTLSPolicies may name are kept
                self._on_object(kind, new, None)
                return
            self._objects[object_id] = new
            self._in_namespace[object_id[1]].add(object_id)
        if kind == "Pod":
            if node_before:
                self._pods_on_node[node_before].discard(object_id)
            node_after = self._node_of(new)
            if node_after:
                self._pods_on_node[node_after].add(object_id)
        elif self._status_write(kind, old, new) and self._store.take_version(
            origin_of(object_id), str(meta(new or {}).get("resourceVersion") or "")
        ):
            return  # a status write: what the store holds parses the same, only its resourceVersion moved
        self._sync(object_id)

    @staticmethod
    def _status_write(kind: str, old: Obj | None, new: Obj | None) -> bool:
        return old is not None and new is not None and kind not in READS_STATUS and _same_but_status(old, new)

    def cached(self, key: ResourceKey) -> Obj | None:
        """The object as the informers last saw it (status included), by the key meshd knows it by."""
        return self._objects.get((key.kind, key.namespace, key.name))

    def _private(self, object_id: ObjectId) -> bool:
        kind, namespace, name = object_id
        return kind == "Secret" and namespace == self._namespace and name in PRIVATE_SECRETS

    @staticmethod
    def _node_of(obj: Obj | None) -> str:
        spec = obj.get("spec") if obj is not None else None
        return str(spec.get("nodeName") or "") if isinstance(spec, dict) else ""

    def _sync(self, object_id: ObjectId) -> bool:
        """Put the object's current valid version in the store, or take it out."""
        origin = origin_of(object_id)
        obj = self._objects.get(object_id)
        if obj is None or not self.mesh.selects(self._namespace_labels.get(object_id[1])):
            return self._store.remove_origin(origin)
        try:
            resource = parse_resource(self._with_topology(obj) if object_id[0] == "Pod" else obj, origin=origin)
        except InvalidResource as err:
            if object_id[0] in ("Secret", "ConfigMap"):
                # Most Secrets are not TLS material for meshd: one is only an error when a DestinationRule
                # names it (reported there, as a missing credential), never on its own.
                self._log.debug("event=secret_not_usable origin=%s field=%s", origin, err.field)
                return self._store.remove_origin(origin)
            self._log.error(
                "event=invalid_resource origin=%s resource=%s field=%s message=%r",
                origin, err.key or "-", err.field, err.message,
            )  # fmt: skip
            # the store keeps the last accepted version of the object (one origin per object)
            return self._store.refuse_origin(origin, [err])
        return self._store.replace_origin(origin, {resource.key: resource})

    def _with_topology(self, pod: Obj) -> Obj:
        labels = _labels(pod)
        node = self._node_labels.get(self._node_of(pod), {})
        extra = {k: node[k] for k in TOPOLOGY_LABELS if k in node and k not in labels}
        if not extra:
            return pod
        return {**pod, "metadata": {**meta(pod), "labels": {**labels, **extra}}}

    # -- inputs ---------------------------------------------------------------------------------

    def _on_namespace(self, old: Obj | None, new: Obj | None) -> None:
        name = str(meta(new if new is not None else old or {}).get("name") or "")
        before = self._namespace_labels.get(name)
        if new is None:
            self._namespace_labels.pop(name, None)
        else:
            self._namespace_labels[name] = _labels(new)
        if before != self._namespace_labels.get(name):
            self._store_namespace(name)
        if self.mesh.selects(before) != self.mesh.selects(self._namespace_labels.get(name)):
            self._log.info("event=namespace_selection namespace=%s selected=%s", name, name in self._selected())
            for object_id in sorted(self._in_namespace.get(name, ())):
                self._sync(object_id)

    def _store_namespace(self, name: str) -> None:
        """A Namespace as a store resource (its labels: Gateway API `allowedRoutes` selectors read them)."""
        origin = origin_of(("Namespace", "", name))
        labels = self._namespace_labels.get(name)
        if labels is None:
            self._store.remove_origin(origin)
            return
        doc = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
        resource = parse_resource(doc, origin=origin)
        self._store.replace_origin(origin, {resource.key: resource})

    def _selected(self) -> set[str]:
        return {ns for ns, labels in self._namespace_labels.items() if self.mesh.selects(labels)}

    def _on_node(self, old: Obj | None, new: Obj | None) -> None:
        name = str(meta(new if new is not None else old or {}).get("name") or "")
        before = {k: v for k, v in self._node_labels.get(name, {}).items() if k in TOPOLOGY_LABELS}
        if new is None:
            self._node_labels.pop(name, None)
        else:
            self._node_labels[name] = _labels(new)
        after = {k: v for k, v in self._node_labels.get(name, {}).items() if k in TOPOLOGY_LABELS}
        if before != after:
            for object_id in sorted(self._pods_on_node.get(name, ())):
                self._sync(object_id)

    def _on_configmap(self, new: Obj | None) -> None:
        """The mesh config: applied on every change (the next generation reads it: `mesh`), fields meshd
        does not use reported once as warnings; an invalid one keeps the last good one in effect."""
        if new is not None and meta(new).get("name") != MESH_CONFIGMAP:
            return
        data: Any = new.get("data") if new is not None else None
        text = data.get("mesh", "") if isinstance(data, dict) else ""
        key = ResourceKey("ConfigMap", self._namespace, MESH_CONFIGMAP)
        try:
            mesh = parse_mesh_config(str(text), default_root=self._namespace, default_trust_domain=self._trust_domain)
            self.mesh_error = None
        except InvalidMeshConfig as exc:
            self.mesh_error = InvalidResource(key, MESH_FIELD, str(exc), "kube:ConfigMap")
            self._log.error("event=invalid_mesh_config resource=%s message=%r", key, str(exc))
            self._store.replace_origin("kube:ConfigMap", {}, [self.mesh_error])
            return  # the previous mesh config stays in effect
        warnings = mesh_warnings(mesh, key=key, origin="kube:ConfigMap", ca_trust_domain=self._trust_domain)
        changed = mesh != self.mesh
        if changed or mesh.unused != self.mesh.unused:
            for warning in warnings:
                self._log.warning("event=mesh_config_warning resource=%s message=%r", key, warning.message)
        self._store.replace_origin("kube:ConfigMap", {}, warnings)
        previous, self.mesh = self.mesh, mesh
        if not changed:
            return
        self._log.info(
            "event=mesh_config root_namespace=%s trust_domain=%s discovery_selectors=%d gateway_trusted_proxies=%d"
            " extension_providers=%d path_normalization=%s trust_domain_aliases=%d",
            mesh.root_namespace, mesh.trust_domain, len(mesh.discovery_selectors), mesh.gateway_trusted_proxies,
            len(mesh.policy.extension_providers), mesh.policy.path_normalization,
            len(mesh.policy.trust_domain_aliases),
        )  # fmt: skip
        if previous.discovery_selectors != mesh.discovery_selectors:
            for object_id in sorted(self._objects):
                self._sync(object_id)
        self._store.touch()  # the next generation reads the new mesh config (it is part of every key)
