"""Status rendering (pure): Istio's shape, other controllers' conditions kept, the transition time
kept while the verdict holds (so an unchanged verdict renders to the status already there)."""

from __future__ import annotations

import datetime

from meshd.api.meta import InvalidResource, ResourceKey
from meshd.kube.status_message import desired_messages, message_for, render_status

VS = ResourceKey("VirtualService", "default", "web")
T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
T1 = T0 + datetime.timedelta(hours=1)


def test_messages_name_the_field_and_classify_like_istioctl_analyze() -> None:
    schema = message_for(InvalidResource(VS, "spec.http[0].timeout", "not a duration"))
    assert (schema.code, schema.name, schema.description) == (
        "IST0106",
        "SchemaValidationError",
        "spec.http[0].timeout: not a duration",
    )
    reference = message_for(InvalidResource(VS, "spec.http[0].delegate", "default/x does not exist"))
    assert (reference.code, reference.name) == ("IST0101", "ReferencedResourceNotFound")
    conflict = message_for(
        InvalidResource(
            VS, "spec.hosts", "web.default.svc.cluster.local is already routed by the older VirtualService x; ignored"
        )
    )
    assert (conflict.code, conflict.name) == ("IST0109", "ConflictingMeshGatewayVirtualServiceHosts")


def test_desired_covers_held_objects_and_rejected_ones_but_only_istio_kinds() -> None:
    svc = ResourceKey("Service", "default", "web")
    dr = ResourceKey("DestinationRule", "default", "web")
    errors = [
        InvalidResource(dr, "spec.host", "bad"),
        InvalidResource(svc, "spec.ports", "bad"),
        InvalidResource(None, "<root>", "x"),
    ]
    desired = desired_messages(objects=[VS, svc], errors=errors)
    assert set(desired) == {VS, dr}
    assert desired[VS] == () and [m.description for m in desired[dr]] == ["spec.host: bad"]


def test_render_keeps_foreign_conditions_and_the_transition_time_of_an_unchanged_verdict() -> None:
    [message] = desired_messages(objects=[], errors=[InvalidResource(VS, "spec.hosts", "empty")])[VS]
    foreign = {"type": "Distributed", "status": "True"}
    first = render_status((message,), generation=3, previous={"conditions": [foreign]}, now=T0)
    assert first["observedGeneration"] == 3
    assert first["conditions"][0] == foreign
    ours = first["conditions"][1]
    assert ours["type"] == "Reconciled" and ours["status"] == "False" and ours["observedGeneration"] == 3
    assert first["validationMessages"] == [
        {
            "type": {"code": "IST0106", "name": "SchemaValidationError"},
            "level": "ERROR",
            "description": "spec.hosts: empty",
            "documentationUrl": "https://istio.io/latest/docs/reference/config/analysis/ist0106/",
        }
    ]
    assert render_status((message,), generation=3, previous=first, now=T1) == first  # nothing to write
    fixed = render_status((), generation=4, previous=first, now=T1)
    assert "validationMessages" not in fixed
    assert fixed["conditions"][1]["status"] == "True"
    assert fixed["conditions"][1]["lastTransitionTime"] == "2026-01-01T01:00:00Z"


def test_a_warning_is_written_at_level_warning() -> None:
    """A TCP port two services share is served to captured proxies: a WARNING on the Service, not an ERROR."""
    key = ResourceKey("Service", "istio-system", "meshd")
    warning = InvalidResource(key, "spec.ports", "TCP port 443 is already used by ...", severity="warning")
    assert message_for(warning).render()["level"] == "WARNING"
    assert message_for(InvalidResource(key, "spec.ports", "port 15006 is reserved")).render()["level"] == "ERROR"
