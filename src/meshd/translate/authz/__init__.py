"""AuthorizationPolicy -> Envoy RBAC (and ext_authz) on the inbound side of sidecars, as Istio does.

- `selection`: which policies apply to a workload (root namespace, namespace, selector; targetRefs this
  release cannot attach fail closed on what they select);
- `matchers`: one value of a policy (Istio's exact / `*`-prefix / `*`-suffix / presence forms, principals,
  namespaces, IP blocks, paths and path templates, headers, JWT claims) -> Envoy matchers;
- `rules`: one rule -> an RBAC policy, for HTTP or for TCP (Istio's handling of HTTP-only fields on TCP);
- `ext_authz`: a CUSTOM policy's extension provider -> the ext_authz filter (HTTP and network);
- `inbound`: the policies of a workload -> its inbound HTTP and network filters (`InboundAuthz`), with
  Istio's fail-closed treatment of what cannot be translated, and the errors, once per policy.
"""
