"""EnvoyFilter BOOTSTRAP patches in the node agent: fetched from meshd and applied to the bootstrap before
Envoy starts (Istio's BOOTSTRAP_XDS_AGENT: pilot-agent asks istiod for the patched bootstrap first).

With `--bootstrap-patches` (or BOOTSTRAP_XDS_AGENT=true in its environment) the agent marks the node it
gives Envoy (metadata MESHD_BOOTSTRAP_PATCHES: "true"), opens an ADS stream of its own to meshd with that
node and subscribes to the bootstrap patch type (translate/envoyfilter/bootstrap.py). For each response it
builds the bootstrap Envoy is to start with:
- the patches merged in, filter by filter (`apply_patches`: a filter whose result breaks a rule of Envoy's
  protos is left out);
- the result checked by the real Envoy (`envoy --mode validate`); when Envoy refuses it, the filters are
  tried one by one and those Envoy refuses are left out;
- an ACK when every patch applied, else a NACK whose message names each refused patch: meshd reports it
  on its EnvoyFilter (generate/nacks.py: status, /debug/config_errors) while this stream is up, so the
  stream stays open for the agent's life.
Envoy is never started with a bootstrap that failed a check: it gets the bootstrap without the refused
filters (without any patch, at worst).

When: Envoy's first start waits for the first response (at most `bootstrap_patches_wait_s`, then it starts
unpatched, logged). A later response (the EnvoyFilters changed) is checked and answered the same way and
used from Envoy's next start (a restart by the supervisor or of the agent); the running Envoy is not
restarted for it, as Istio's is not (Istio: restart the pod to apply a bootstrap change)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import pathlib
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc
from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap
from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import json_format

from meshd.api.envoy_value import resolve_types
from meshd.translate.envoyfilter.bootstrap import BOOTSTRAP_PATCH, Refusal, apply_patches, decode, filter_of

Validate = Callable[[Mapping[str, Any]], Awaitable[str | None]]  # an Envoy bootstrap -> Envoy's error, or None
Channel = Callable[[], Awaitable[grpc.aio.Channel]]
_INVALID_ARGUMENT = 3


def to_proto(bootstrap: Mapping[str, Any]) -> Bootstrap:
    resolve_types(dict(bootstrap))
    return json_format.ParseDict(bootstrap, Bootstrap())


def to_dict(bootstrap: Bootstrap) -> dict[str, Any]:
    out: dict[str, Any] = json_format.MessageToDict(bootstrap, preserving_proto_field_name=True)
    return out


def envoy_validator(*, envoy_path: str, work_dir: pathlib.Path) -> Validate:
    """`envoy --mode validate` on a bootstrap: None if Envoy accepts it, else the end of what Envoy said."""

    async def validate(config: Mapping[str, Any]) -> str | None:
        with tempfile.NamedTemporaryFile("w", suffix=".json", dir=work_dir, delete=False) as file:
            json.dump(config, file)
        path = pathlib.Path(file.name)
        try:
            proc = await asyncio.create_subprocess_exec(
                envoy_path, "--mode", "validate", "-c", str(path), "--log-level", "error", "--use-dynamic-base-id",
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            out, _ = await proc.communicate()
        finally:
            await asyncio.to_thread(path.unlink, missing_ok=True)
        if proc.returncode == 0:
            return None
        lines = [line for line in out.decode(errors="replace").splitlines() if line.strip()]
        return " ".join(lines[-3:])[-600:] or f"envoy --mode validate exited {proc.returncode}"

    return validate


class BootstrapPatches:
    """The bootstrap Envoy starts with, kept up to date from meshd's bootstrap patches."""

    def __init__(
        self, *, base: Mapping[str, Any], channel: Channel, validate: Validate, log: logging.Logger,
        retry_base_s: float = 0.5, retry_max_s: float = 15.0,
    ) -> None:  # fmt: skip
        self.base = dict(base)
        self.current: dict[str, Any] = dict(base)  # what Envoy's next start gets
        self.applied: tuple[str, ...] = ()  # the resource names of the patches in `current`
        self.refused: tuple[Refusal, ...] = ()
        self.received = asyncio.Event()  # the first response was handled
        self._channel = channel
        self._validate = validate
        self._log = log
        self._retry = (retry_base_s, retry_max_s)

    def status(self) -> dict[str, Any]:
        return {
            "received": self.received.is_set(),
            "applied": list(self.applied),
            "refused": [
                {"envoyfilter": r.envoy_filter, "patches": list(r.resources), "error": r.message} for r in self.refused
            ],
        }

    async def run(self) -> None:
        """Forever: keep an ADS stream to meshd, handle each response (reconnecting with backoff)."""
        delay = self._retry[0]
        while True:
            try:
                await self._stream()
                delay = self._retry[0]
            except Exception as err:  # never the end of the agent: logged, tried again
                code = err.code().name if isinstance(err, grpc.aio.AioRpcError) else f"{type(err).__name__}: {err}"
                self._log.warning("event=bootstrap_patches_stream_failed error=%s retry_in_s=%.2f", code, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._retry[1])

    async def _stream(self) -> None:
        """One delta ADS stream (delta: its resources carry their names, a SotW response's would not)."""
        node = json_format.ParseDict(self.base["node"], Node(), ignore_unknown_fields=True)
        requests: asyncio.Queue[discovery_pb2.DeltaDiscoveryRequest | None] = asyncio.Queue()
        first = discovery_pb2.DeltaDiscoveryRequest(type_url=BOOTSTRAP_PATCH, node=node, resource_names_subscribe=["*"])
        await requests.put(first)

        async def outgoing() -> AsyncIterator[discovery_pb2.DeltaDiscoveryRequest]:
            while (item := await requests.get()) is not None:
                yield item

        held: dict[str, bytes] = {}
        channel = await self._channel()
        try:
            call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources(outgoing())
            async for response in call:
                if response.type_url != BOOTSTRAP_PATCH:
                    continue
                for name in response.removed_resources:
                    held.pop(name, None)
                for resource in response.resources:
                    held[resource.name] = resource.resource.value
                error = await self.handle(held)
                reply = discovery_pb2.DeltaDiscoveryRequest(type_url=BOOTSTRAP_PATCH, response_nonce=response.nonce)
                if error is not None:
                    reply.error_detail.code, reply.error_detail.message = _INVALID_ARGUMENT, error
                await requests.put(reply)
        finally:
            await requests.put(None)
            with contextlib.suppress(Exception):
                await channel.close()

    async def handle(self, resources: Mapping[str, bytes]) -> str | None:
        """Build the bootstrap from these patches; the NACK message naming what was refused, or None."""
        patches, unknown = decode(resources)
        refused: list[Refusal] = []
        if unknown:
            refused.append(Refusal("-", tuple(sorted(unknown)), "not a bootstrap patch meshd names"))
        result, failed = apply_patches(to_proto(self.base), patches)
        refused += failed
        kept = [(n, v) for n, v in patches if not any(n in r.resources for r in failed)]
        config = to_dict(result) if kept else dict(self.base)
        if kept and (envoy_error := await self._validate(config)) is not None:
            if (own := await self._validate(self.base)) is not None:  # not the patches' fault: not theirs to carry
                self._log.error("event=bootstrap_invalid error=%s note=patches_checked_by_proto_rules", json.dumps(own))
            else:
                config, kept, by_envoy = await self._one_by_one(kept, envoy_error)
                refused += by_envoy
        first = not self.received.is_set()
        changed = config != self.current
        # a refused patch is held back by meshd from then on (xds/isolation.py): its refusal stays listed
        # until meshd sends that patch again (a new version: checked again)
        earlier = [r for r in self.refused if not any(n in resources for n in r.resources)]
        self.current, self.applied, self.refused = config, tuple(n for n, _ in kept), (*earlier, *refused)
        self.received.set()
        for r in refused:
            self._log.error(
                "event=bootstrap_patch_refused envoyfilter=%s patches=%s error=%s",
                r.envoy_filter, ",".join(r.resources), json.dumps(r.message),
            )  # fmt: skip
        self._log.info(
            "event=bootstrap_patches applied=%d refused=%d%s",
            len(kept), len(refused), "" if first or not changed else " note=used_from_envoy_next_start",
        )  # fmt: skip
        if not refused:
            return None
        return "; ".join(
            f"bootstrap patch {', '.join(repr(n) for n in r.resources)} (EnvoyFilter {r.envoy_filter}): {r.message}"
            for r in refused
        )

    async def _one_by_one(
        self, patches: list[tuple[str, Bootstrap]], envoy_error: str
    ) -> tuple[dict[str, Any], list[tuple[str, Bootstrap]], list[Refusal]]:
        """Envoy refused the patched bootstrap: add the filters one at a time, keeping those it accepts."""
        groups: dict[str, list[tuple[str, Bootstrap]]] = {}
        for name, value in patches:
            groups.setdefault(name.rsplit("/", 1)[0], []).append((name, value))
        kept: list[tuple[str, Bootstrap]] = []
        refused: list[Refusal] = []
        config = dict(self.base)
        for group in groups.values():
            trial, _ = apply_patches(to_proto(self.base), [*kept, *group])
            error = await self._validate(to_dict(trial))
            if error is None:
                kept += group
                config = to_dict(trial)
            else:
                names = tuple(n for n, _ in group)
                refused.append(Refusal(filter_of(names[0]), names, f"Envoy refuses the patched bootstrap: {error}"))
        if not refused:  # each alone passed, together they do not: none of them
            names = tuple(n for n, _ in patches)
            together = Refusal(filter_of(names[0]), names, f"Envoy refuses them together: {envoy_error}")
            return dict(self.base), [], [together]
        return config, kept, refused
