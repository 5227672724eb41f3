"""Generation: one World (+ the connected proxies) -> per-proxy snapshots of shared, serialised xDS
resources, carried across pushes through caches whose keys are checked against what each build reads.
Pure and synchronous: no asyncio, grpc or Kubernetes client here; the push loop (meshd.push) drives it
and the ADS server (meshd.xds) serves what it produces."""
