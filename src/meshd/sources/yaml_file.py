"""Parse one multi-document YAML file into resources. Pure: text in; (resources, errors, the keys of
documents that were refused) out. The store keeps the last accepted version of a refused resource."""

from __future__ import annotations

from dataclasses import dataclass

import yaml

from meshd.api.meta import InvalidResource, Resource, ResourceKey
from meshd.api.parse import document_key, parse_resource
from meshd.model.store import ConfigStore


@dataclass(frozen=True)
class FileResult:
    resources: dict[ResourceKey, Resource]
    errors: list[InvalidResource]
    rejected: tuple[ResourceKey, ...] = ()  # documents refused whose identity could be read
    malformed: bool = False  # not YAML at all: nothing of it can be trusted

    def apply(self, store: ConfigStore, *, origin: str) -> bool:
        """Put the file's content in the store: a refused document (or a malformed file) leaves what was
        accepted before in place."""
        if self.malformed:
            return store.refuse_origin(origin, self.errors)
        return store.replace_origin(origin, self.resources, self.errors, rejected=self.rejected)


def parse_file(text: str, *, origin: str) -> FileResult:
    """Every valid document becomes a resource; an invalid document is reported (and named in
    `rejected` when its identity can be read); a file that is not YAML at all is `malformed`."""
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}" if mark is not None else "<file>"
        problem = getattr(exc, "problem", None) or str(exc)
        return FileResult({}, [InvalidResource(None, where, f"malformed YAML: {problem}", origin)], malformed=True)
    resources: dict[ResourceKey, Resource] = {}
    errors: list[InvalidResource] = []
    rejected: list[ResourceKey] = []
    for index, doc in enumerate(docs):
        if doc is None:
            continue
        if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            items = doc["items"]
        else:
            items = [doc]
        for item in items:
            try:
                resource = parse_resource(item, origin=origin)
            except InvalidResource as err:
                if err.key is None:
                    err = InvalidResource(None, f"document {index + 1}: {err.field}", err.message, origin)
                errors.append(err)
                key = document_key(item)
                if key is not None:
                    rejected.append(key)
                continue
            if resource.key in resources:
                errors.append(InvalidResource(resource.key, "metadata.name", "defined twice in this file", origin))
                continue
            resources[resource.key] = resource
    return FileResult(resources, errors, tuple(rejected))
