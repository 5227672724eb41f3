"""The DNS names in the webhook's serving certificate when meshd's CA issues it (Kubernetes mode, no
`--webhook-cert` files): what the API server dials (`<service>.<ns>.svc`), and `meshd.<ns>.svc` /
`istiod.<ns>.svc` as the secure port. The certificate itself comes from the CA (`ca/serving.py`), its
root goes into the webhook configurations' `caBundle` (`kube/webhook_patcher.py`)."""

from __future__ import annotations

import ipaddress

from meshd.settings import Settings


def webhook_sans(settings: Settings) -> list[str]:
    ns = settings.namespace
    names = [f"{settings.webhook_service}.{ns}.svc", f"meshd.{ns}.svc", f"istiod.{ns}.svc", *settings.secure_sans]
    names += _ip_san(settings.webhook_host)  # an API server calling https://<that IP>:<port> verifies it
    return list(dict.fromkeys(names))


def _ip_san(host: str) -> list[str]:
    """The webhook's listen address when it is one IP (not 0.0.0.0 / ::, not a name)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return []
    return [] if address.is_unspecified else [str(address)]
