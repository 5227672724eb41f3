"""SDS secrets for DestinationRule and Gateway `credentialName`, resolved as Istio does in the proxy's own
namespace:
- `kubernetes://<name>`: the client certificate and key of Secret `<name>` (`cert`/`key`, else
  `tls.crt`/`tls.key`);
- `kubernetes://<name>-cacert`: the CA (and CRL) of Secret `<name>-cacert` if it exists, else of
  Secret `<name>` (`cacert`/`crl`, else `ca.crt`/`ca.crl`);
- `configmap://<namespace>/<name>` (a BackendTLSPolicy's caCertificateRefs): the CA (`ca.crt`) of ConfigMap `<name>`
  of `<namespace>`, served to proxies of every namespace (a CA is no secret); the World keeps it among the
  Secrets as `configmap:<name>` (`api.kube.ConfigMap.ca_secret`);
- `kubernetes-gateway://<namespace>/<name>` (a Gateway API listener's certificateRef, Istio's name): the
  certificate and key of Secret `<name>` of `<namespace>`, which must be the proxy's own or one whose
  ReferenceGrant lets Gateways of the proxy's namespace read it (`grants`, from the World); else not served.
A resource that cannot be resolved is not served (Envoy keeps the cluster warming until its
initial fetch timeout, then fails its connections: closed, never plaintext) and the rule is reported.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from functools import partial
from types import MappingProxyType

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2

from meshd.api.destinationrule import DestinationRule
from meshd.api.gateway import GATEWAY_SDS_PREFIX
from meshd.api.kube import CONFIGMAP_SECRET_PREFIX, Secret
from meshd.api.meta import InvalidResource
from meshd.translate.spec import Spec, ident
from meshd.translate.upstream_tls import (
    CA_SUFFIX,
    CONFIGMAP_SDS_PREFIX,
    SDS_PREFIX,
    credential_settings,
    sds_names,
)

Secrets = Mapping[tuple[str, str], Secret]
# (Gateway namespace, Secret namespace, Secret name or "" for all): what ReferenceGrants allow (World)
SecretGrants = Mapping[tuple[str, str, str], bool]
_NO_GRANTS: SecretGrants = MappingProxyType({})


def gateway_ref(resource: str) -> tuple[str, str] | None:
    """(namespace, name) of a `kubernetes-gateway://<namespace>/<name>` resource, else None."""
    if not resource.startswith(GATEWAY_SDS_PREFIX):
        return None
    namespace, _, name = resource.removeprefix(GATEWAY_SDS_PREFIX).partition("/")
    return (namespace, name) if namespace and name and "/" not in name else None


def configmap_ref(resource: str) -> tuple[str, str] | None:
    """The World's key of the CA a `configmap://<namespace>/<name>` resource names, else None."""
    if not resource.startswith(CONFIGMAP_SDS_PREFIX):
        return None
    namespace, _, name = resource.removeprefix(CONFIGMAP_SDS_PREFIX).partition("/")
    return (namespace, CONFIGMAP_SECRET_PREFIX + name) if namespace and name and "/" not in name else None


def readable(grants: SecretGrants, *, namespace: str, resource: str) -> bool:
    """Whether proxies of `namespace` may be served `resource` (another namespace's Secret: a ReferenceGrant)."""
    ref = gateway_ref(resource)
    if ref is None:
        return not resource.startswith(GATEWAY_SDS_PREFIX)
    return ref[0] == namespace or (namespace, ref[0], ref[1]) in grants or (namespace, ref[0], "") in grants


def source_keys(*, namespace: str, resource: str) -> tuple[tuple[str, str], ...]:
    """The (namespace, name) of every Secret `resource` may be read from (a cache's inputs)."""
    ref = gateway_ref(resource) or configmap_ref(resource)
    if ref is not None:
        return (ref,)
    base = resource.removeprefix(SDS_PREFIX)
    return ((namespace, base), (namespace, base.removesuffix(CA_SUFFIX)))


def source(
    secrets: Secrets, *, namespace: str, resource: str, grants: SecretGrants = _NO_GRANTS
) -> tuple[Secret | None, str]:
    """The Secret an SDS resource is read from, or None and why not."""
    if resource.startswith(GATEWAY_SDS_PREFIX):
        return _gateway_source(secrets, namespace=namespace, resource=resource, grants=grants)
    if resource.startswith(CONFIGMAP_SDS_PREFIX):
        ref = configmap_ref(resource)
        holder = secrets.get(ref) if ref is not None else None
        if ref is None or holder is None:
            return None, f"{resource}: no ConfigMap with a ca.crt of PEM certificates"
        return holder, ""
    base = resource.removeprefix(SDS_PREFIX)
    if base.endswith(CA_SUFFIX):
        own = secrets.get((namespace, base))
        holder = own if own is not None else secrets.get((namespace, base.removesuffix(CA_SUFFIX)))
        if holder is None:
            return None, f"no Secret {base.removesuffix(CA_SUFFIX)} or {base} in namespace {namespace}"
        if holder.ca() is None:
            return None, f"Secret {namespace}/{holder.metadata.name} holds no CA certificate (cacert or ca.crt)"
        return holder, ""
    holder = secrets.get((namespace, base))
    if holder is None:
        return None, f"no Secret {base} in namespace {namespace} (the proxy's namespace)"
    if holder.key_cert() is None:
        return None, f"Secret {namespace}/{base} holds no certificate and key (cert/key or tls.crt/tls.key)"
    return holder, ""


def _gateway_source(
    secrets: Secrets, *, namespace: str, resource: str, grants: SecretGrants
) -> tuple[Secret | None, str]:
    ref = gateway_ref(resource)
    if ref is None:
        return None, f"{resource!r} does not name a Secret as {GATEWAY_SDS_PREFIX}<namespace>/<name>"
    if not readable(grants, namespace=namespace, resource=resource):
        return None, (f"Secret {ref[0]}/{ref[1]}: no ReferenceGrant in {ref[0]} lets Gateways of {namespace} read it")
    holder = secrets.get(ref)
    if holder is None:
        return None, f"no Secret {ref[1]} in namespace {ref[0]}"
    if holder.key_cert() is None:
        return None, f"Secret {ref[0]}/{ref[1]} holds no certificate and key (cert/key or tls.crt/tls.key)"
    return holder, ""


def _build(resource: str, holder: Secret) -> secret_pb2.Secret:
    if resource.endswith(CA_SUFFIX) or resource.startswith(CONFIGMAP_SDS_PREFIX):
        ca = holder.ca()
        assert ca is not None
        validation = common_pb2.CertificateValidationContext(trusted_ca=base_pb2.DataSource(inline_bytes=ca[0]))
        if ca[1] is not None:
            validation.crl.inline_bytes = ca[1]
        return secret_pb2.Secret(name=resource, validation_context=validation)
    pair = holder.key_cert()
    assert pair is not None
    return secret_pb2.Secret(
        name=resource,
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_bytes=pair[0]),
            private_key=base_pb2.DataSource(inline_bytes=pair[1]),
        ),
    )


def secret_specs(
    secrets: Secrets, *, namespace: str, names: Iterable[str], grants: SecretGrants = _NO_GRANTS
) -> Iterator[Spec]:
    """The SDS resources a proxy in `namespace` may be served (those that resolve)."""
    for name in sorted(names):
        holder, _ = source(secrets, namespace=namespace, resource=name, grants=grants)
        if holder is not None:
            yield Spec(name, ("sds", namespace, name, ident(holder)), partial(_build, name, holder))


def check_credentials(rule: DestinationRule, secrets: Secrets, *, namespaces: Iterable[str]) -> list[InvalidResource]:
    """A rule's credentialNames that do not resolve for proxies in the given namespaces."""
    errors = []
    for path, tls in credential_settings(rule):
        for namespace in sorted(set(namespaces)):
            for name in sds_names(tls):
                if name.startswith(CONFIGMAP_SDS_PREFIX):
                    continue  # the BackendTLSPolicy it comes from reports it (model/gateway_api/backend_tls.py)
                holder, why = source(secrets, namespace=namespace, resource=name)
                if holder is None:
                    errors.append(InvalidResource(rule.key, f"{path}.credentialName", why))
    return errors
