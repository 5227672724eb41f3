"""Status conditions as the Gateway API specifies them: (type, status, reason, message) without times;
the status writer adds observedGeneration and lastTransitionTime when it writes them."""

from __future__ import annotations

from typing import Any

Condition = tuple[str, str, str, str]  # type, "True"/"False", reason, message
CONTROLLER_NAME = "istio.io/gateway-controller"


def cond(kind: str, ok: bool, reason: str, message: str) -> Condition:
    return (kind, "True" if ok else "False", reason, message)


def rendered(conditions: list[Condition]) -> list[dict[str, Any]]:
    """Conditions as the API holds them (lastTransitionTime and observedGeneration added when written)."""
    return [{"type": t, "status": s, "reason": r, "message": m} for t, s, r, m in conditions]
