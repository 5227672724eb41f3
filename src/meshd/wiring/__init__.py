"""The composition root's parts: `meshd/app.py` and the modules here are the only code that builds
and wires meshd's components (one Kubernetes API client, both gRPC servers with their ADS servicers,
the HTTP servers, the CA, the leader duties) from `Settings`. Nothing below app imports this package."""
