"""Istio Gateways as Envoy configuration for router proxies (`router~<ip>~<pod>.<ns>~...`): which
Gateways select a gateway workload (`select.py`), how server hosts and VirtualService hosts meet
(`hosts.py`), the servers of every selected Gateway merged per port with their conflicts (`plan.py`),
the TLS a server terminates (`tls.py`), route configurations (`routes.py`), listeners (`listeners.py`)
and the SNI-named clusters of AUTO_PASSTHROUGH servers (`sni_dnat.py`). Pure: errors are returned."""
