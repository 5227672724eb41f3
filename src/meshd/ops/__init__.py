"""The operations HTTP port (15014): readiness, Prometheus metrics and the debug endpoints, rendering
only what app hands it (callables), so it imports no other edge package."""
