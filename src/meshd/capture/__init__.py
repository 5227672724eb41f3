"""Transparent traffic capture for a pod: `meshd iptables` (the istio-iptables equivalent).

`options` parses and validates the capture options, `rules` turns them into NAT rules (pure),
`restore` merges them into a saved nat table (pure), `apply` runs iptables-save/iptables-restore.
"""
