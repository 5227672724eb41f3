"""The bundled demo: tiny HTTP apps, a load generator and a runner that drives real Envoy sidecars."""
