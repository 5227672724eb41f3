"""The DNS names in the webhook's serving certificate when meshd's CA issues it (Kubernetes mode, no
`--webhook-cert` files): what the API server dials (`<service>.<ns>.svc`), and `meshd.<ns>.svc` /
`istiod.<ns>.svc` as the secure port. The certificate itself comes from the CA (`ca/serving.py`), its
root goes into the webhook configurations' `caBundle` (`kube/webhook_patcher.py`)."""

from __future__ import annotations

from meshd.settings import Settings


def webhook_sans(settings: Settings) -> list[str]:
    ns = settings.namespace
    names = [f"{settings.webhook_service}.{ns}.svc", f"meshd.{ns}.svc", f"istiod.{ns}.svc", *settings.secure_sans]
    return list(dict.fromkeys(names))
