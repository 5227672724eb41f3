"""Sizes bounded on the file path (issue 20, defect 8): a YAML alias bomb ("billion laughs") is refused
before anything expands it, naming the file; error messages are bounded whatever the input; a file over
the size limit is refused and what it contributed before stays."""

from __future__ import annotations

import logging
import pathlib

from meshd.api.meta import MAX_MESSAGE_CHARS, InvalidResource
from meshd.clock import SystemClock
from meshd.model.store import ConfigStore
from meshd.sources.directory import DirectorySource
from meshd.sources.yaml_file import MAX_ALIAS_EXPANSION, parse_file

SERVICE = (
    "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\n"
    "spec: {ports: [{name: http, port: 80}]}\n"
)


def _bomb(levels: int) -> str:
    """Nine aliases per level: expands to 9**levels nodes (levels=9: 387 million, from about 1 KB)."""
    text = 'apiVersion: v1\nkind: Service\nmetadata: {name: lol, namespace: default}\nspec:\n  l0: &l0 ["lol"]\n'
    for level in range(1, levels + 1):
        text += f"  l{level}: &l{level} [" + ",".join([f"*l{level - 1}"] * 9) + "]\n"
    return text


def test_an_alias_bomb_is_refused_naming_the_file() -> None:
    assert MAX_ALIAS_EXPANSION < 9**6  # small enough that a missed bomb still ends the test (531k nodes)
    for levels in (6, 9):
        result = parse_file(_bomb(levels), origin="laughs.yaml")
        assert result.malformed and not result.resources
        [error] = result.errors
        assert "laughs.yaml" in str(error) and "aliases expand to" in error.message


def test_modest_aliases_are_fine() -> None:
    text = SERVICE.replace("metadata: {", "metadata: {labels: &l {app: web}, annotations: *l, ")
    result = parse_file(text, origin="ok.yaml")
    assert not result.errors and len(result.resources) == 1


def test_error_messages_are_bounded() -> None:
    error = InvalidResource(None, "spec." + "x" * 10_000, "bad value " + "y" * 1_000_000, "f.yaml")
    assert len(error.message) < MAX_MESSAGE_CHARS + 100 and len(error.field) < 400
    assert error.message.endswith("more characters)")
    # through validation: a huge value quoted by the message
    result = parse_file(SERVICE.replace("port: 80", 'port: "' + "9x" * 300_000 + '"'), origin="huge.yaml")
    assert result.errors and all(len(str(e)) < MAX_MESSAGE_CHARS + 500 for e in result.errors)


def test_an_integer_too_long_to_convert_is_refused_not_raised() -> None:
    result = parse_file(SERVICE.replace("port: 80", "port: " + "9" * 5000), origin="digits.yaml")
    assert result.malformed and "digits.yaml" in str(result.errors[0])


def test_a_file_over_the_size_limit_is_refused_and_its_last_content_stays(tmp_path: pathlib.Path) -> None:
    store = ConfigStore()
    source = DirectorySource(
        directory=tmp_path,
        store=store,
        clock=SystemClock(),
        interval_s=1.0,
        log=logging.getLogger("meshd.test.yaml_bounds"),
        max_file_bytes=1000,
    )
    path = tmp_path / "web.yaml"
    path.write_text(SERVICE)
    assert source.scan()
    path.write_text(SERVICE.replace("port: 80", "port: 81") + "#" * 1000)
    source.scan()
    [(_, service)] = list(store.resources())
    assert service.spec.ports[0].port == 80  # type: ignore[attr-defined]
    assert any("larger than 1000 bytes" in e.message and str(path) in str(e) for e in store.errors())
