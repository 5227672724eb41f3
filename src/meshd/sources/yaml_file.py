"""Parse one multi-document YAML file into resources, keeping the last good version of any
resource that is now invalid. Pure: text in, (resources, errors) out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import yaml

from meshd.api.meta import InvalidResource, Resource, ResourceKey
from meshd.api.parse import document_key, parse_resource


@dataclass(frozen=True)
class FileResult:
    resources: dict[ResourceKey, Resource]
    errors: list[InvalidResource]


def parse_file(text: str, *, origin: str, previous: Mapping[ResourceKey, Resource]) -> FileResult:
    """Every valid document becomes a resource. An invalid document is reported; if it was valid
    before, its previous version stays. A file that is not YAML at all keeps everything it had."""
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}" if mark is not None else "<file>"
        problem = getattr(exc, "problem", None) or str(exc)
        return FileResult(dict(previous), [InvalidResource(None, where, f"malformed YAML: {problem}", origin)])
    resources: dict[ResourceKey, Resource] = {}
    errors: list[InvalidResource] = []
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
                if key is not None and key in previous:
                    resources[key] = previous[key]
                continue
            if resource.key in resources:
                errors.append(InvalidResource(resource.key, "metadata.name", "defined twice in this file", origin))
                continue
            resources[resource.key] = resource
    return FileResult(resources, errors)
