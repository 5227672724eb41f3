"""A deterministic type-confusion fuzz (issue 20: "6,405 type-confused documents found 96 that crash").

Every document of the golden inputs and examples is taken as a seed; each value in it (at every depth,
the document itself included) is replaced in turn by values of the wrong type or out of range. A mutant
must either parse or be refused with an InvalidResource (`parse` stage); one that parses must then be
generated into every proxy's config without an exception (`generate` stage, the World built from the
mutant and the rest of its file).

    python -m tests.typefuzz             # counts per stage, the first crashes of each kind
"""

from __future__ import annotations

import copy
import pathlib
import sys
import traceback
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml

from meshd.api.meta import InvalidResource, Resource
from meshd.api.parse import parse_resource
from meshd.generate.generator import ConfigGenerator
from meshd.model.world import build_world
from meshd.translate.proxy import InvalidNodeId, parse_node_id

ROOT = pathlib.Path(__file__).resolve().parent.parent
SEED_FILES = sorted([*(ROOT / "tests/golden/testdata").glob("*.in.yaml"), *(ROOT / "examples").rglob("*.yaml")])
CONFUSED: tuple[Any, ...] = (["x"], {"k": "v"}, None, -1, 99_999_999_999, 1.5, True, "", "x", [[1]], [{"a": None}])

# Fields the golden inputs do not use (WorkloadEntry ports: the reported `ports: {http: -1}`).
EXTRA_SEED = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: vm, namespace: default}
spec:
  hosts: [vm.example.com]
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}]
  resolution: STATIC
  workloadSelector: {labels: {app: vm}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-1, namespace: default}
spec:
  address: 10.9.9.9
  labels: {app: vm}
  ports: {http: 8080}
  weight: 2
  locality: r1/z1
"""

Path = tuple[str | int, ...]


def seed_files() -> list[list[dict[str, Any]]]:
    """Every seed file's documents (mappings only)."""
    files = []
    for text in [*(path.read_text() for path in SEED_FILES), EXTRA_SEED]:
        docs = [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]
        if docs:
            files.append(docs)
    return files


def paths(value: Any, prefix: Path = ()) -> Iterator[Path]:
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from paths(item, (*prefix, index))


def replaced(doc: Any, path: Path, new: Any) -> Any:
    if not path:
        return copy.deepcopy(new)
    out = copy.deepcopy(doc)
    holder = out
    for step in path[:-1]:
        holder = holder[step]
    holder[path[-1]] = copy.deepcopy(new)
    return out


def confusions(doc: dict[str, Any]) -> Iterator[tuple[Path, Any]]:
    """Each (path, confused value) of a document: `replaced(doc, path, value)` is a mutant."""
    for path in paths(doc):
        for value in CONFUSED:
            yield path, value


@dataclass(frozen=True)
class Crash:
    stage: str  # parse | generate
    kind: str
    path: Path
    error: str


def parse_crash(doc: Any) -> tuple[Resource | None, str | None]:
    """(resource or None, the crash if parsing raised anything but InvalidResource)."""
    try:
        return parse_resource(doc), None
    except InvalidResource:
        return None, None
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"


def generate_crash(resources: list[Resource]) -> str | None:
    """Build every proxy's config from these resources: the exception, if one is raised."""
    try:
        world = build_world(resources, domain_suffix="cluster.local")
        generator = ConfigGenerator(world)
        generator.precompute()
        namespaces = sorted({r.metadata.namespace for r in resources} | {"default"})
        for namespace in namespaces:
            for ip in ["10.254.0.1", *world.workloads]:
                try:  # a namespace no proxy can claim (a node id refused on connect) has no proxy
                    proxy = parse_node_id(f"sidecar~{ip}~p.{namespace}~{namespace}.svc.cluster.local")
                except InvalidNodeId:
                    continue
                generator.snapshot(proxy)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def fuzz(*, generate: bool, limit: int | None = None, shard: tuple[int, int] = (0, 1)) -> tuple[int, list[Crash]]:
    """Run every mutant (up to `limit`); returns (mutants tried, crashes). `shard` (i, n): only every n-th
    mutant, from the i-th on; the n shards together run every mutant once."""
    tried, crashes = 0, []
    which, shards = shard
    number = -1
    for docs in seed_files():
        rest_of = {
            i: [r for j, d in enumerate(docs) if j != i for r in [_parse_or_none(d)] if r is not None]
            for i in range(len(docs))
        }
        for index, doc in enumerate(docs):
            kind = str(doc.get("kind"))
            for path, value in confusions(doc):
                number += 1
                if number % shards != which:
                    continue
                if limit is not None and tried >= limit:
                    return tried, crashes
                tried += 1
                mutant = replaced(doc, path, value)
                resource, crash = parse_crash(mutant)
                if crash is not None:
                    crashes.append(Crash("parse", kind, path, crash))
                elif generate and resource is not None:
                    error = generate_crash([*rest_of[index], resource])
                    if error is not None:
                        crashes.append(Crash("generate", kind, path, error))
    return tried, crashes


def _parse_or_none(doc: Any) -> Resource | None:
    try:
        return parse_resource(doc)
    except Exception:
        return None


def main() -> int:
    generate = "--parse-only" not in sys.argv
    tried, crashes = fuzz(generate=generate)
    by_stage = Counter(c.stage for c in crashes)
    print(f"type-confused documents: {tried}; crashes: {len(crashes)} {dict(by_stage)}")
    seen: set[tuple[str, str]] = set()
    for crash in crashes:
        signature = (crash.stage, crash.error.split(":")[0])
        if signature not in seen:
            seen.add(signature)
            print(f"  {crash.stage} {crash.kind} {'.'.join(map(str, crash.path)) or '<doc>'}: {crash.error[:160]}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:
        traceback.print_exc()
        sys.exit(2)
