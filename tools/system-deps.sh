#!/bin/sh
# System packages the tests use (network-namespace capture tests need iptables; the metrics tests a real
# Prometheus, Debian's `prometheus`) and `make bench` uses (`wrk` for the metrics per-request cost).
# Installs what is missing when apt-get is available and we are root; otherwise a no-op
# (the tests that need a missing tool skip and say why).
set -u
missing=""
command -v iptables-restore >/dev/null 2>&1 || missing="$missing iptables"
command -v ip >/dev/null 2>&1 || missing="$missing iproute2"
command -v prometheus >/dev/null 2>&1 || missing="$missing prometheus"
command -v wrk >/dev/null 2>&1 || missing="$missing wrk"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "system-deps: missing:$missing (not root or no apt-get): the tests that need them will skip" >&2
    exit 0
fi
echo "system-deps: installing$missing" >&2
if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >/dev/null \
        || echo "system-deps: could not install$missing: the tests that need them will skip" >&2
fi
exit 0
