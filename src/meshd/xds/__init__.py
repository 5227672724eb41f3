"""xDS serving: versioned resources, per-proxy snapshots, the stream state machine, the ADS server."""
