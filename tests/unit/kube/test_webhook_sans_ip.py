"""The serving certificates name what clients dial: each SAN once, and the listen IP when it is one."""

from __future__ import annotations

from meshd.ca.serving import serving_sans
from meshd.kube.webhook_certs import webhook_sans
from meshd.settings import Settings


def test_webhook_certificate_has_the_ip_it_serves_on_without_secure_san() -> None:
    settings = Settings(webhook_host="127.0.0.1", secure_sans=("meshd.example",))
    assert "127.0.0.1" in webhook_sans(settings)
    assert "0.0.0.0" not in webhook_sans(Settings(webhook_host="0.0.0.0"))


def test_secure_port_certificate_lists_each_san_once() -> None:
    settings = Settings(
        namespace="istio-system", secure_host="10.0.0.5", secure_sans=("meshd.istio-system.svc", "x", "x")
    )
    sans = serving_sans(settings)
    assert len(sans) == len(set(sans)) and "10.0.0.5" in sans and "meshd.istio-system.svc" in sans
