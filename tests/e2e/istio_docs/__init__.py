"""Istio's documentation examples as fixtures: the Bookinfo and httpbin samples in standalone form and
each traffic-management task page's YAML (istio.io/latest/docs/tasks/traffic-management/...), written
from the documented facts (names, hosts, matches, weights, faults, timeouts, policies) and applied
unchanged. Only the Pod addresses of the workload files are templated.

`SAMPLES`: Istio's own `samples/` files that use gateways, TCP routes and egress ServiceEntries
(bookinfo-gateway, httpbin-gateway, helloworld-gateway, tcp-echo-all-v1 / tcp-echo-20-v2) and the egress
task pages' YAML (egress-control, egress-gateway), applied unchanged by tests/e2e/test_istio_samples.py
with the workload files of `SAMPLE_WORKLOADS` (the ingress and egress gateways of Istio's default install,
helloworld, tcp-echo).

A page step is the files the page has applied so far, in order. `kubectl apply` replaces an object that
an earlier file created (virtual-service-reviews-test-v2.yaml replaces the `reviews` VirtualService of
virtual-service-all-v1.yaml); a config directory would instead report two files defining one object. So
`cluster_state` applies the files as kubectl does and gives one config file per object, holding that
object's YAML document exactly as the page wrote it.
"""

from __future__ import annotations

import pathlib
import re
from string import Template

import yaml

HERE = pathlib.Path(__file__).parent

# Files that describe the workloads (not a page's routing rules): templated with Pod addresses.
WORKLOADS = ("bookinfo.yaml", "httpbin.yaml")

# Every page step: the files applied together (Bookinfo's subsets come with every Bookinfo step, as the
# pages require "Deploy the Bookinfo sample application including the service versions").
DR_ALL = "destination-rule-all.yaml"
PAGES: dict[str, tuple[str, ...]] = {
    "bookinfo-versions": (DR_ALL,),
    "request-routing/all-v1": (DR_ALL, "virtual-service-all-v1.yaml"),
    "request-routing/jason-v2": (DR_ALL, "virtual-service-all-v1.yaml", "virtual-service-reviews-test-v2.yaml"),
    "traffic-shifting/50-v3": (DR_ALL, "virtual-service-all-v1.yaml", "virtual-service-reviews-50-v3.yaml"),
    "traffic-shifting/v3": (DR_ALL, "virtual-service-all-v1.yaml", "virtual-service-reviews-v3.yaml"),
    "fault-injection/delay": (
        DR_ALL,
        "virtual-service-all-v1.yaml",
        "virtual-service-reviews-test-v2.yaml",
        "virtual-service-ratings-test-delay.yaml",
    ),
    "fault-injection/abort": (
        DR_ALL,
        "virtual-service-all-v1.yaml",
        "virtual-service-reviews-test-v2.yaml",
        "virtual-service-ratings-test-abort.yaml",
    ),
    "request-timeouts/delay": (DR_ALL, "request-timeouts-reviews-v2.yaml", "request-timeouts-ratings-delay.yaml"),
    "request-timeouts/timeout": (
        DR_ALL,
        "request-timeouts-reviews-v2.yaml",
        "request-timeouts-ratings-delay.yaml",
        "request-timeouts-reviews-timeout.yaml",
    ),
    "circuit-breaking": ("circuit-breaking-destination-rule.yaml",),
    "mirroring/v1": ("mirroring-httpbin-v1.yaml",),
    "mirroring/mirror-v2": ("mirroring-httpbin-v1.yaml", "mirroring-httpbin-mirror-v2.yaml"),
}


# Istio's samples/ and the egress task pages: the files applied together for each step.
SAMPLE_WORKLOADS = ("ingressgateway.yaml", "egressgateway.yaml", "helloworld.yaml", "tcp-echo.yaml")
SAMPLES: dict[str, tuple[str, ...]] = {
    "bookinfo-gateway": ("bookinfo-gateway.yaml",),
    "httpbin-gateway": ("httpbin-gateway.yaml",),
    "helloworld-gateway": ("helloworld-gateway.yaml",),
    "tcp-echo/all-v1": ("tcp-echo-all-v1.yaml",),
    "tcp-echo/20-v2": ("tcp-echo-all-v1.yaml", "tcp-echo-20-v2.yaml"),
    "egress-control/httpbin-ext": ("egress-control-serviceentries.yaml",),
    "egress-control/timeout": ("egress-control-serviceentries.yaml", "egress-control-httpbin-ext-timeout.yaml"),
    "egress-gateway/http": ("egress-gateway-http.yaml",),
    "egress-gateway/https": ("egress-gateway-https.yaml",),
}


def text(name: str) -> str:
    return (HERE / name).read_text()


def workloads(addresses: dict[str, str]) -> dict[str, str]:
    """The workload files with Pod addresses filled in (`productpage_v1` -> `127.0.x.y`, ...)."""
    return {name: Template(text(name)).substitute(addresses) for name in WORKLOADS}


def sample_workloads(addresses: dict[str, str]) -> dict[str, str]:
    """The workload files of the samples with Pod addresses filled in (`ingressgateway` -> `127.0.x.y`, ...)."""
    return {name: Template(text(name)).substitute(addresses) for name in SAMPLE_WORKLOADS}


def documents(source: str) -> list[str]:
    """The YAML documents of a multi-document file, each with its own text (comments included)."""
    return [doc.strip("\n") + "\n" for doc in re.split(r"^---[ \t]*$", source, flags=re.M) if yaml.safe_load(doc)]


def object_file(document: str) -> str:
    """The config file name of the object a document defines: `<kind>.<namespace>.<name>.yaml`."""
    obj = yaml.safe_load(document)
    meta = obj["metadata"]
    return f"{obj['kind'].lower()}.{meta.get('namespace', 'default')}.{meta['name']}.yaml"


def cluster_state(step: str) -> dict[str, str]:
    """What the cluster holds after a page step: config file name -> the object's document."""
    state: dict[str, str] = {}
    for name in PAGES[step] if step in PAGES else SAMPLES[step]:
        for document in documents(text(name)):
            state[object_file(document)] = document
    return state
