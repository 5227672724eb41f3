"""Parse one multi-document YAML file into resources. Pure: text in; (resources, errors, the keys of
documents that were refused) out. The store keeps the last accepted version of a refused resource.

Bounded: a document whose aliases expand to more than MAX_ALIAS_EXPANSION nodes beyond its own (a
"billion laughs" bomb: 1 KB that expands to 10^9 nodes) is refused before anything walks it; nesting
too deep for the parser is refused as malformed; the file size is bounded by its reader (directory.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


MAX_ALIAS_EXPANSION = 100_000  # nodes that aliases may add to a document once expanded
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when available: the same YAML, faster


class AliasBomb(yaml.YAMLError):
    pass


def _expanded_nodes(root: yaml.Node) -> tuple[int, int]:
    """(distinct nodes, nodes once every alias is expanded), in time linear in the distinct nodes."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            sizes[id(node)] = 1
            continue
        if children_done:
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children)
        else:
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
    return len(sizes), sizes[id(root)]


def load_documents(text: str) -> list[Any]:
    """yaml.safe_load_all, refusing a document whose aliases expand beyond MAX_ALIAS_EXPANSION nodes."""
    loader = _LOADER(text)
    try:
        docs: list[Any] = []
        while loader.check_node():
            node = loader.get_node()
            distinct, expanded = _expanded_nodes(node)
            if expanded - distinct > MAX_ALIAS_EXPANSION:
                raise AliasBomb(
                    f"document {len(docs) + 1}: aliases expand to {expanded} nodes (more than"
                    f" {MAX_ALIAS_EXPANSION} beyond its {distinct})"
                )
            docs.append(loader.construct_document(node))
        return docs
    finally:
        loader.dispose()


def parse_file(text: str, *, origin: str) -> FileResult:
    """Every valid document becomes a resource; an invalid document is reported (and named in
    `rejected` when its identity can be read); a file that is not YAML at all is `malformed`."""
    try:
        docs = load_documents(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}" if mark is not None else "<file>"
        problem = getattr(exc, "problem", None) or str(exc)
        return FileResult({}, [InvalidResource(None, where, f"malformed YAML: {problem}", origin)], malformed=True)
    except (RecursionError, ValueError) as exc:  # nested too deep; an integer of more than 4,300 digits
        message = f"malformed YAML: {type(exc).__name__}: {exc}"
        return FileResult({}, [InvalidResource(None, "<file>", message, origin)], malformed=True)
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


def refuse_kinds(result: FileResult, refusals: dict[str, str], *, origin: str) -> FileResult:
    """The file's resources of these kinds refused (kind -> why), as invalid documents are: named, not applied."""
    refused = [key for key in result.resources if key.kind in refusals]
    if not refused:
        return result
    return FileResult(
        {key: r for key, r in result.resources.items() if key.kind not in refusals},
        [*result.errors, *(InvalidResource(key, "kind", refusals[key.kind], origin) for key in refused)],
        (*result.rejected, *refused),
        result.malformed,
    )
