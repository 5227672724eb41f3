"""Node agent: Envoy bootstrap generation and Envoy process supervision for a sidecar."""
