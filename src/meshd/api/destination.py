"""Where a VirtualService route sends traffic: a destination (host, subset, port) and the bounds of
route weights, shared by HTTP routes (`api/virtualservice.py`) and TCP/TLS routes (`api/l4route.py`)."""

from __future__ import annotations

from pydantic import Field

from meshd.api.meta import StrictModel
from meshd.api.values import PortNumber

# Istio's `weight` is an int32; Envoy adds a route's weights up as a uint32
MAX_WEIGHT = 2**31 - 1
MAX_TOTAL_WEIGHT = 2**32 - 1


class PortSelector(StrictModel):
    number: PortNumber


class Destination(StrictModel):
    host: str = Field(min_length=1)
    subset: str = ""
    port: PortSelector | None = None


def check_weights(weights: list[int]) -> None:
    """Route weights are relative, as in current Istio: only a total of 0 (nowhere to send traffic,
    with several destinations) or a total above Envoy's uint32 is refused."""
    if len(weights) > 1 and sum(weights) == 0:
        raise ValueError("route: destination weights add up to 0")
    if sum(weights) > MAX_TOTAL_WEIGHT:
        raise ValueError(f"route: destination weights add up to more than {MAX_TOTAL_WEIGHT}")
