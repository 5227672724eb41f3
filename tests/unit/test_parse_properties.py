"""Property tests (Hypothesis) of the parsers and API models: any input either parses or is refused with
an InvalidResource; nothing else is ever raised (issue 20, item 3). The exhaustive type-confusion fuzz
(tests/typefuzz.py) runs here too, at the parse and generation stages."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from meshd.api.meta import InvalidResource, Resource
from meshd.api.parse import KINDS, parse_resource
from meshd.sources.yaml_file import parse_file
from tests.properties import budget, confused_documents, values
from tests.typefuzz import fuzz


def _parses_or_refuses(doc: Any) -> None:
    try:
        resource = parse_resource(doc, origin="fuzz")
    except InvalidResource as err:
        assert isinstance(err.field, str) and isinstance(err.message, str)
        assert len(err.message) < 2000  # an error never carries the whole input
    else:
        assert isinstance(resource, Resource)


@budget(300)
@given(values)
def test_any_value_parses_or_is_an_invalid_resource(doc: Any) -> None:
    _parses_or_refuses(doc)


@budget(300)
@given(st.sampled_from(sorted(KINDS)), values, values, values)
def test_any_document_of_a_known_kind_parses_or_is_invalid(kind: str, meta: Any, spec: Any, extra: Any) -> None:
    versions = KINDS[kind][1]
    doc = {"apiVersion": versions[0], "kind": kind, "metadata": meta, "spec": spec, "data": extra, "ports": extra}
    _parses_or_refuses(doc)
    _parses_or_refuses({**doc, "metadata": {"name": "n", "namespace": "ns"}})


@budget(400)
@given(confused_documents())
def test_a_real_document_with_one_value_of_any_type_parses_or_is_invalid(doc: dict[str, Any]) -> None:
    _parses_or_refuses(doc)


@budget(200)
@given(st.sampled_from(sorted(KINDS)), values)
def test_api_models_raise_only_validation_errors(kind: str, spec: Any) -> None:
    """The models themselves: a validator meeting an unexpected type fails validation, never with
    TypeError or the like (parse_resource would still refuse it, but as an internal error)."""
    model, versions = KINDS[kind]
    doc = {"apiVersion": versions[0], "kind": kind, "metadata": {"name": "n", "namespace": "ns"}, "spec": spec}
    with contextlib.suppress(ValidationError):
        model.model_validate(doc)


@budget(200)
@given(st.text(max_size=300))
def test_parse_file_never_raises_on_any_text(text: str) -> None:
    result = parse_file(text, origin="fuzz.yaml")
    assert all(isinstance(e, InvalidResource) for e in result.errors)


@budget(200)
@given(st.lists(st.one_of(values, confused_documents()), max_size=4))
def test_parse_file_of_any_documents_keeps_the_valid_and_reports_the_rest(docs: list[Any]) -> None:
    text = yaml.safe_dump_all(docs)
    result = parse_file(text, origin="fuzz.yaml")
    assert not result.malformed
    for doc in docs:
        try:
            resource = parse_resource(doc, origin="fuzz.yaml")
        except InvalidResource:
            continue
        assert resource.key in result.resources or any(e.key == resource.key for e in result.errors)


FUZZ_SHARDS = 8  # independent tests: `make test` shares them among its workers (tests/xdist_scheduling.py)


@pytest.mark.parametrize("shard", range(FUZZ_SHARDS))
def test_exhaustive_type_confusion_crashes_nothing_at_parse_or_generation(shard: int) -> None:
    """Every value of every golden/example document replaced by each confused value (~57,000 documents, every
    FUZZ_SHARDS-th one per shard: the shards together try each once): each parses or is refused, and what
    parses generates every proxy's config without an exception (a route weight of 99999999999 used to pass
    validation and make every generation raise)."""
    tried, crashes = fuzz(generate=True, shard=(shard, FUZZ_SHARDS))
    assert tried > 50_000 // FUZZ_SHARDS
    assert crashes == []
