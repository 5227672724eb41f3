"""The last accepted version of each VirtualService and DestinationRule.

Parsing already keeps the last good version of a resource whose new version is malformed. Some
rejections only show in translation, against the rest of the mesh: a subset that no
DestinationRule defines, a port the service does not have, a delegate that does not exist, a
credential Secret that is missing. For those, the version that translated without error last
stays in effect (and the rejection is reported), rather than the host falling back to its
default route. Pure bookkeeping: the push loop asks which versions to put back and verifies them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from meshd.api.meta import InvalidResource, Resource, ResourceKey

FALLBACK_KINDS = frozenset({"VirtualService", "DestinationRule"})


class LastAccepted:
    def __init__(self) -> None:
        self._latest: dict[ResourceKey, Resource] = {}
        self._accepted: dict[ResourceKey, Resource] = {}
        # (newest, accepted) pairs whose substitution was itself rejected: not tried again
        self._futile: dict[ResourceKey, tuple[Resource, Resource]] = {}
        # keys whose newest version may not be the accepted one: changed since, or refused at, the last settle
        self._unsettled: set[ResourceKey] = set()

    def observe(self, changes: Mapping[ResourceKey, Resource | None]) -> None:
        """Record the newest version of every resource of a fallback kind (None: deleted)."""
        for key, resource in changes.items():
            if key.kind not in FALLBACK_KINDS:
                continue
            self._futile.pop(key, None)
            if resource is None:
                self._latest.pop(key, None)
                self._accepted.pop(key, None)
                self._unsettled.discard(key)
            else:
                self._latest[key] = resource
                self._unsettled.add(key)

    def latest(self, key: ResourceKey) -> Resource | None:
        return self._latest.get(key)

    def substitutions(self, errors: Iterable[InvalidResource]) -> dict[ResourceKey, Resource]:
        """For each rejected resource whose newest version is not the accepted one: the accepted one."""
        out: dict[ResourceKey, Resource] = {}
        for err in errors:
            key = err.key
            if key is None or key.kind not in FALLBACK_KINDS:
                continue
            accepted, latest = self._accepted.get(key), self._latest.get(key)
            if accepted is None or latest is None or accepted is latest:
                continue
            futile = self._futile.get(key)
            if futile is None or futile[0] is not latest or futile[1] is not accepted:
                out[key] = accepted
        return out

    def failed(self, keys: Iterable[ResourceKey]) -> None:
        """The accepted versions of these keys were rejected too: stop putting them back."""
        for key in keys:
            latest, accepted = self._latest.get(key), self._accepted.get(key)
            if latest is not None and accepted is not None:
                self._futile[key] = (latest, accepted)

    def settle(self, rejected: Iterable[ResourceKey]) -> None:
        """After a push: every newest version that was not rejected is now the accepted one."""
        refused = set(rejected)
        for key in self._unsettled:  # every other key's newest version is its accepted one already
            resource = self._latest.get(key)
            if resource is not None and key not in refused:
                self._accepted[key] = resource
        self._unsettled = {key for key in self._unsettled if key in refused and key in self._latest}


def kept_previous(err: InvalidResource) -> InvalidResource:
    """The rejection of a new version, saying that the previous version stays in effect."""
    return InvalidResource(err.key, err.field, f"{err.message}; the previous version stays in effect", err.origin)
