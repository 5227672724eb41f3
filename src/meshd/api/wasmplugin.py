"""extensions.istio.io WasmPlugin (v1alpha1), as Istio defines it: a proxy-wasm module run as an HTTP filter
(`type` HTTP or unset) or a network filter (`type: NETWORK`: on connections' bytes) by the proxies it
selects (`selector`, `targetRefs`, or every proxy of its namespace; of the mesh from the root namespace),
placed by `phase` and `priority` among meshd's own HTTP (or network) filters.

What meshd delivers (translate/wasm_plugin.py): the filter is an ECDS reference (`<namespace>.<name>`) and
the Wasm config an ECDS resource; the module is `file://` (a path inside the proxy's container, read by
Envoy) or `http(s)://` fetched by Envoy itself with `sha256` verified (Envoy's remote data source), so
`sha256` is required for those: a module meshd cannot vouch for is never run.

Strict: unknown fields are refused by path; so is what meshd does not implement: `oci://` (and a URL
without a scheme, which Istio reads as OCI: no registry client), `imagePullSecret` (registries only),
`verificationKey` (Istio does not implement it either), `targetRef` (singular, hidden in
Istio's docs) and target kinds other than Gateway / GatewayClass."""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from meshd.api.meta import Resource, StrictModel, refused

Phase = Literal["UNSPECIFIED_PHASE", "AUTHN", "AUTHZ", "STATS"]
Mode = Literal["UNDEFINED", "CLIENT", "SERVER", "CLIENT_AND_SERVER"]
_SHA256 = re.compile(r"^[a-f0-9]{64}$")
_C_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class WasmSelector(StrictModel):
    match_labels: dict[str, str] = Field(default_factory=dict)


class WasmTargetRef(StrictModel):
    group: str = ""
    kind: str = Field(min_length=1)
    name: str = Field(min_length=1, max_length=253)
    namespace: str = ""

    @model_validator(mode="after")
    def _kind(self) -> WasmTargetRef:
        if (self.group, self.kind) not in (
            ("gateway.networking.k8s.io", "Gateway"),
            ("gateway.networking.k8s.io", "GatewayClass"),
        ):
            raise ValueError(
                f"kind: {self.group or 'core'}/{self.kind}: meshd attaches WasmPlugins to gateway.networking.k8s.io "
                "Gateway or GatewayClass only (Service and ServiceEntry targets are for waypoints, which meshd "
                "does not run)"
            )
        return self


class WasmPort(StrictModel):
    number: int = Field(ge=1, le=65535)


class TrafficSelector(StrictModel):
    mode: Mode = "UNDEFINED"
    ports: list[WasmPort] = Field(default_factory=list)

    def selects(self, *, direction: str, port: int | None) -> bool:
        """`direction` CLIENT (outbound, and gateways) or SERVER (inbound); `port` the listener's / chain's."""
        mode = "CLIENT_AND_SERVER" if self.mode == "UNDEFINED" else self.mode
        if mode != "CLIENT_AND_SERVER" and mode != direction:
            return False
        return not self.ports or port in {p.number for p in self.ports}


class EnvVar(StrictModel):
    name: str = Field(min_length=1, max_length=256)
    value_from: Literal["INLINE", "HOST"] = "INLINE"
    value: str = Field(default="", max_length=2048)

    @model_validator(mode="after")
    def _check(self) -> EnvVar:
        if not _C_IDENTIFIER.match(self.name):
            raise ValueError(f"name: {self.name!r} is not a C identifier")
        if self.value_from == "HOST" and self.value:
            raise ValueError("value: may only be set when valueFrom is INLINE")
        return self


class VmConfig(StrictModel):
    env: list[EnvVar] = Field(default_factory=list, max_length=256)

    @field_validator("env")
    @classmethod
    def _unique(cls, env: list[EnvVar]) -> list[EnvVar]:
        names = [e.name for e in env]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"{dup[0]!r} is given twice")
        return env


class WasmPluginSpec(StrictModel):
    selector: WasmSelector | None = None
    target_ref: WasmTargetRef | None = refused("hidden in Istio's API (use targetRefs)")
    target_refs: list[WasmTargetRef] = Field(default_factory=list, max_length=16)
    url: str = Field(min_length=1)
    sha256: str = ""
    image_pull_policy: Literal["UNSPECIFIED_POLICY", "IfNotPresent", "Always"] = "UNSPECIFIED_POLICY"
    image_pull_secret: str | None = refused(
        "registry credentials are for oci:// images, which meshd does not pull (use file:// or http(s):// with sha256)"
    )
    verification_key: str | None = refused("module signatures are not verified (Istio does not implement it either)")
    plugin_config: dict[str, Any] | None = None
    plugin_name: str = Field(default="", max_length=256)
    phase: Phase = "UNSPECIFIED_PHASE"
    priority: int = Field(default=0, ge=-(2**31), le=2**31 - 1)
    fail_strategy: Literal["FAIL_CLOSE", "FAIL_OPEN", "FAIL_RELOAD"] = "FAIL_CLOSE"
    vm_config: VmConfig | None = None
    match: list[TrafficSelector] = Field(default_factory=list)
    type: Literal["UNSPECIFIED_PLUGIN_TYPE", "HTTP", "NETWORK"] = "UNSPECIFIED_PLUGIN_TYPE"

    @model_validator(mode="after")
    def _check(self) -> WasmPluginSpec:
        if self.selector is not None and self.target_refs:
            raise ValueError("targetRefs: only one of targetRefs or selector can be set")
        if self.sha256 and not _SHA256.match(self.sha256):
            raise ValueError("sha256: 64 lowercase hexadecimal digits are expected")
        scheme = self.scheme
        if scheme in ("", "oci"):
            raise ValueError(
                f"url: {'oci://' if scheme else 'a URL without a scheme (OCI to Istio)'} is not supported by "
                "meshd: no registry is pulled from; use file:// (in the proxy's container) or http(s):// with sha256"
            )
        if scheme not in ("file", "http", "https"):
            raise ValueError(f"url: scheme {scheme!r}: one of file, http, https, oci is expected")
        parts = urlsplit(self.url)
        if scheme == "file" and not parts.path.startswith("/"):
            raise ValueError("url: file:// takes an absolute path (file:///path/to/module.wasm)")
        if scheme == "file" and self.sha256:
            raise ValueError(
                "sha256: not checked for a file:// module by meshd (Envoy reads the file as it is): refused rather "
                "than promised"
            )
        if scheme in ("http", "https"):
            if not parts.hostname:
                raise ValueError("url: no host")
            try:
                parts.port  # noqa: B018 (validates it)
            except ValueError as exc:
                raise ValueError(f"url: {exc}") from None
            if not self.sha256:
                raise ValueError(
                    "sha256: required for an http(s):// module in meshd: the proxy fetches it and runs it only if "
                    "its checksum matches"
                )
        return self

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme.lower() if "://" in self.url else ""


class WasmPlugin(Resource):
    spec: WasmPluginSpec
