"""meshd benchmarks (`make bench`): printed tables plus benchmarks/results/latest.json."""
