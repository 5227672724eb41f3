"""meshd benchmarks (`make bench`): scenarios at scale with a separate load-client process, a reference
server for the overhead ratio, printed tables plus benchmarks/results/latest.json. See README.md."""
