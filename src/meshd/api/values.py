"""Value types shared by Istio's APIs: durations (Go syntax, as Istio's CRDs accept them), regular
expressions (RE2, as Envoy compiles them) and percentages."""

from __future__ import annotations

import re
from typing import Annotated

import re2
from pydantic import AfterValidator, Field

# Envoy refuses a regex whose compiled RE2 program is larger than this (runtime key
# re2.max_program_size.error_level, default 100): meshd refuses it first.
MAX_REGEX_PROGRAM_SIZE = 100

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration such as `10s`, `0.5s`, `1m30s`, `250ms`, `1h`."""
    if not isinstance(text, str) or not text:
        raise ValueError("a duration is required, e.g. 10s or 500ms")
    pos, total = 0, 0.0
    while pos < len(text):
        m = _PART.match(text, pos)
        if m is None:
            raise ValueError(f"{text!r} is not a duration (use e.g. 10s, 500ms, 1m30s)")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return total


# Go's largest duration (about 292 years); protobuf's Duration holds it, Envoy accepts it.
MAX_DURATION_SECONDS = (2**63 - 1) / 1e9


def _bounded(text: str) -> float:
    seconds = parse_duration(text)
    if seconds > MAX_DURATION_SECONDS:
        raise ValueError(f"duration {text!r} is longer than the largest duration (about 2562047h)")
    return seconds


def _duration(text: str) -> str:
    if _bounded(text) < 0.001:
        raise ValueError(f"duration {text!r} must be at least 1ms")
    return text


def _duration_or_zero(text: str) -> str:
    _bounded(text)
    return text


def check_regex(pattern: str) -> str:
    """RE2 semantics, as Envoy: Perl look-arounds and backreferences are refused, and so is a pattern
    whose program is larger than Envoy accepts."""
    try:
        compiled = re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as err:
        reason = err.args[0].decode() if err.args and isinstance(err.args[0], bytes) else str(err)
        raise ValueError(f"invalid RE2 regex {pattern!r}: {reason}") from None
    if compiled.programsize > MAX_REGEX_PROGRAM_SIZE:
        raise ValueError(
            f"regex {pattern!r} is too complex for Envoy (program size {compiled.programsize} > "
            f"{MAX_REGEX_PROGRAM_SIZE})"
        )
    return pattern


Duration = Annotated[str, AfterValidator(_duration)]
"""A duration of at least 1ms."""
DurationOrZero = Annotated[str, AfterValidator(_duration_or_zero)]
"""A duration that may be 0 (meaning "none" where Istio says so)."""
Regex = Annotated[str, AfterValidator(check_regex)]
Percent = Annotated[float, Field(ge=0, le=100)]
MAX_PORT = 65535
PortNumber = Annotated[int, Field(ge=1, le=MAX_PORT)]


def valid_port(port: int) -> bool:
    """A port number Envoy's proto validation accepts where a port is required (1..65535)."""
    return 1 <= port <= MAX_PORT


def seconds_nanos(text: str) -> tuple[int, int]:
    """A duration as protobuf (seconds, nanos)."""
    total = round(parse_duration(text) * 1e9)
    return total // 1_000_000_000, total % 1_000_000_000
