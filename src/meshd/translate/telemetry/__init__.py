"""Telemetry: access logging and tracing of sidecars and gateways (Telemetry resources and the mesh config)."""
