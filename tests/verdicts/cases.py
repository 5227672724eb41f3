"""The verdict table (`cases.yaml`): Istio-valid and Istio-invalid objects written from Istio's documentation,
each with the verdict meshd's models, the chart's CRDs and the validating webhook must all give."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass
from typing import Any

import yaml

CASES_FILE = pathlib.Path(__file__).with_name("cases.yaml")
PREFIX = "verdict.meshd.test/"
NAMESPACE = "verdicts"


@dataclass(frozen=True)
class Case:
    name: str
    doc: dict[str, Any]
    valid: bool
    field: str  # the field path meshd's error names (invalid cases)
    schema: bool  # the CRD alone refuses it
    istio_differs: str  # why istioctl 1.14 gives the other verdict ("" when it agrees)

    def document(self, namespace: str = NAMESPACE) -> dict[str, Any]:
        """The object as applied (a fresh copy, in `namespace`)."""
        doc: dict[str, Any] = yaml.safe_load(yaml.safe_dump(self.doc))
        doc["metadata"]["namespace"] = namespace
        return doc


def load_cases() -> list[Case]:
    cases = []
    for doc in yaml.safe_load_all(CASES_FILE.read_text()):
        if not doc:
            continue
        notes = doc["metadata"]["annotations"]
        expect = notes[PREFIX + "expect"]
        assert expect in ("valid", "invalid"), doc["metadata"]["name"]
        cases.append(
            Case(
                name=doc["metadata"]["name"],
                doc=doc,
                valid=expect == "valid",
                field=notes.get(PREFIX + "field", ""),
                schema=notes.get(PREFIX + "layer") == "schema",
                istio_differs=notes.get(PREFIX + "istio", "") or notes.get(PREFIX + "refused", ""),
            )
        )
    return cases


CASES = load_cases()
IDS = [c.name for c in CASES]
