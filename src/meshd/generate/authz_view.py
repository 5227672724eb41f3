"""`/debug/authorizationz?proxyID=`: the effective authorization of one connected proxy, as the current
generation builds it: the policies that apply to its workload (and how: mesh-wide, namespace, selector,
or failing closed as an unattachable target), each one's errors, the path normalisation, and the RBAC /
ext_authz filters its inbound HTTP and TCP chains get (as Envoy JSON). For a gateway (router), those of
its listeners."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from meshd.generate.generator import ConfigGenerator
from meshd.translate.authz.checks import policy_errors
from meshd.translate.proxy import Proxy


def authorization_view(generator: ConfigGenerator, proxy: Proxy) -> dict[str, Any]:
    world, options = generator.world, generator.options
    workload = world.workloads.get(proxy.ip)
    queries = generator.queries
    if proxy.type == "router":  # a gateway: by its labels, on its listeners
        labels = workload.labels if workload is not None else ()
        selected = queries.gateway_policies(proxy.namespace, labels)
        authz = queries.gateway_authorization(proxy.namespace, labels)
    else:
        selected = queries.selected_policies(proxy.namespace, proxy.ip)
        authz = queries.authorization(proxy.namespace, proxy.ip)

    def describe(policy: Any, how: str) -> dict[str, Any]:
        errors = policy_errors(
            policy, mesh=options.mesh, services=world.services, root_namespace=options.root_namespace
        )
        return {
            "policy": f"{policy.metadata.namespace}/{policy.metadata.name}",
            "action": policy.action,
            "dryRun": policy.dry_run,
            "applies": how,
            "errors": [f"{e.field}: {e.message}" for e in errors],
        }

    def how(policy: Any) -> str:
        if policy.spec.targets:
            return "targetRef (gateway)"
        if policy.metadata.namespace == options.root_namespace and policy.metadata.namespace != proxy.namespace:
            return "mesh-wide (root namespace)"
        return "selector" if policy.spec.selector and policy.spec.selector.match_labels else "namespace-wide"

    return {
        "proxy": proxy.node_id,
        "workload": f"{workload.namespace}/{workload.name}" if workload is not None else None,
        "labels": dict(workload.labels) if workload is not None else {},
        "policies": [describe(p, how(p)) for p in selected.policies]
        + [describe(p, "fails closed here: unattachable target") for p in selected.unattached],
        "pathNormalization": authz.normalization,
        "httpFilters": [json_format.MessageToDict(f) for f in authz.http_filters],
        "networkFilters": [json_format.MessageToDict(f) for f in authz.network_filters],
    }
