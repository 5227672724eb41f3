"""VirtualService HTTP fault injection (delays and aborts, with their percentages), validated as Istio does."""

from __future__ import annotations

from pydantic import Field, model_validator

from meshd.api.meta import StrictModel, refused
from meshd.api.values import Duration, Percent

GRPC_STATUS = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
)  # fmt: skip


class Percentage(StrictModel):
    value: Percent = 0.0


class FaultDelay(StrictModel):
    fixed_delay: Duration | None = None
    exponential_delay: str | None = refused("not implemented by Istio either; use fixedDelay")
    percentage: Percentage | None = None
    percent: int | None = Field(default=None, ge=0, le=100)  # deprecated integer form

    @model_validator(mode="after")
    def _check(self) -> FaultDelay:
        if self.fixed_delay is None:
            raise ValueError("fixedDelay: required")
        return self

    def rate(self) -> float:
        return _rate(self.percentage, self.percent)


def _rate(percentage: Percentage | None, percent: int | None) -> float:
    if percentage is not None:
        return percentage.value
    if percent is not None:
        return float(percent)
    return 100.0


class FaultAbort(StrictModel):
    http_status: int | None = None
    grpc_status: str | None = None
    http2_error: str | None = refused("not implemented by Istio either; use httpStatus or grpcStatus")
    percentage: Percentage | None = None

    @model_validator(mode="after")
    def _check(self) -> FaultAbort:
        chosen = [f for f in ("http_status", "grpc_status", "http2_error") if getattr(self, f) is not None]
        if len(chosen) != 1:
            raise ValueError("httpStatus: exactly one of httpStatus or grpcStatus is required")
        if self.http_status is not None and not 200 <= self.http_status <= 599:
            raise ValueError(f"httpStatus: {self.http_status} is not an HTTP status in [200, 599]")
        if self.grpc_status is not None and self.grpc_status not in GRPC_STATUS:
            raise ValueError(f"grpcStatus: {self.grpc_status!r} is not a gRPC status name (e.g. UNAVAILABLE)")
        return self

    def rate(self) -> float:
        return _rate(self.percentage, None)


class HTTPFaultInjection(StrictModel):
    delay: FaultDelay | None = None
    abort: FaultAbort | None = None

    @model_validator(mode="after")
    def _check(self) -> HTTPFaultInjection:
        if self.delay is None and self.abort is None:
            raise ValueError("delay: a fault needs delay or abort")
        return self
