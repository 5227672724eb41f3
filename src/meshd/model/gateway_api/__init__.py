"""Kubernetes Gateway API objects converted into the Istio Gateways and VirtualServices meshd already
translates (one Istio Gateway per valid listener; one VirtualService per listener and hostname), with the
status conditions the Gateway API specification defines (pure)."""
