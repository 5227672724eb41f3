"""One generation after another: store changes in, (generator, every rejection) out.

The World is kept up to date change by change; each generation is built from the previous one (what
did not change is carried over). Where translation rejects the new version of a VirtualService or
DestinationRule, its last accepted version is put back and the generation built again (kept only if
that version is still accepted): the one place translation rejections keep what was accepted before.
Pure and synchronous; the push loop calls it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from meshd.api.meta import InvalidResource, Resource, ResourceKey
from meshd.generate.generator import ConfigGenerator
from meshd.generate.options import GenerateOptions
from meshd.generate.tls_files import ReadFile
from meshd.model.fallback import LastAccepted, kept_previous
from meshd.model.state import WorldState
from meshd.xds.resource import XdsResource


class Generations:
    def __init__(
        self, *, domain_suffix: str, options: GenerateOptions, read_file: ReadFile | None, check: bool = False
    ) -> None:
        self.options = options
        self._read_file = read_file
        self._check = check
        self._state = WorldState(domain_suffix=domain_suffix)
        self._fallback = LastAccepted()
        self._substituted: dict[ResourceKey, Resource] = {}
        self.current: ConfigGenerator | None = None

    def next(
        self,
        changes: Mapping[ResourceKey, Resource | None],
        *,
        revision: int,
        extra: Mapping[str, Sequence[XdsResource]],
        options: GenerateOptions | None = None,
    ) -> tuple[ConfigGenerator, list[InvalidResource]]:
        """Apply the changes and generate; returns the generator and every rejection to report.
        `options`: new mesh-wide settings from now on (everything is rebuilt with them)."""
        if options is not None:
            self.options = options
        pending: dict[ResourceKey, Resource | None] = dict(changes)
        self._fallback.observe(pending)
        for key in self._substituted:  # start again from the newest versions
            pending.setdefault(key, self._fallback.latest(key))
        self._state.apply(pending)
        generator = self._generate(self.current, revision, extra)
        # a warning (served, only not everywhere: a gateway binding that resolves nowhere) rejects nothing
        refused = [e for e in generator.errors if e.severity != "warning"]
        substitutes = self._fallback.substitutions(refused)
        rejected = [e for e in refused if e.key in substitutes]
        if substitutes:
            self._state.apply(substitutes)
            generator = self._generate(generator, revision, extra)
            failed = {e.key for e in generator.errors if e.key in substitutes and e.severity != "warning"}
            if failed:
                self._fallback.failed(failed)
                self._state.apply({key: self._fallback.latest(key) for key in failed})
                substitutes = {k: v for k, v in substitutes.items() if k not in failed}
                rejected = [e for e in rejected if e.key not in failed]
                generator = self._generate(generator, revision, extra)
        self._substituted = substitutes
        errors = generator.errors + [kept_previous(e) for e in rejected]
        self._fallback.settle(e.key for e in errors if e.key is not None and e.severity != "warning")
        self.current = generator
        return generator, errors

    def _generate(
        self, previous: ConfigGenerator | None, revision: int, extra: Mapping[str, Sequence[XdsResource]]
    ) -> ConfigGenerator:
        generator = ConfigGenerator(
            self._state.world(revision=revision),
            options=self.options,
            extra=extra,
            previous=previous,
            read_file=self._read_file,
            check=self._check,
        )
        generator.precompute()
        return generator
