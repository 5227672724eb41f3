"""Validation of VirtualService and DestinationRule: every field Istio accepts parses (written as a
user would, in YAML), and every rule rejects a bad resource with `Kind ns/name`, the field path and
a clear message: RE2 regexes (as Envoy compiles them), durations, weights, percentages, one-of
fields, codes Envoy would refuse."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest
import yaml

from meshd.api.destinationrule import DestinationRule
from meshd.api.meta import InvalidResource
from meshd.api.parse import parse_resource
from meshd.api.values import parse_duration, seconds_nanos
from meshd.api.virtualservice import VirtualService

EVERY_VS_FIELD = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews, "*.example.com"]
  gateways: [mesh]
  exportTo: ["."]
  http:
  - name: everything
    match:
    - name: m1
      uri: {regex: "^/api/v[0-9]+/.*"}
      scheme: {exact: https}
      method: {exact: GET}
      authority: {prefix: reviews}
      headers: {end-user: {exact: jason}, x-present: {}}
      withoutHeaders: {x-debug: {}}
      queryParams: {q: {exact: "1"}, r: {regex: "a+"}}
      port: 9080
      sourceLabels: {app: productpage}
      sourceNamespace: bookinfo
      ignoreUriCase: true
      gateways: [mesh]
    route:
    - destination: {host: reviews, subset: v2, port: {number: 9080}}
      weight: 75
      headers: {request: {set: {x-a: "1"}}, response: {remove: [x-b]}}
    - destination: {host: reviews, subset: v1}
      weight: 25
    rewrite: {uriRegexRewrite: {match: "^/api/(.*)", rewrite: "/\\\\1"}, authority: reviews.internal}
    timeout: 1.5s
    retries: {attempts: 3, perTryTimeout: 500ms, retryOn: "5xx,connect-failure,503", retryRemoteLocalities: true}
    fault:
      delay: {fixedDelay: 7s, percentage: {value: 10}}
      abort: {grpcStatus: UNAVAILABLE, percentage: {value: 0.1}}
    mirrors:
    - destination: {host: shadow}
      percentage: {value: 50}
    corsPolicy:
      allowOrigins: [{exact: "https://a.example"}, {regex: "https://.*\\\\.example"}]
      allowMethods: [GET, POST]
      allowHeaders: [x-custom]
      exposeHeaders: [x-trace]
      maxAge: 24h
      allowCredentials: true
      unmatchedPreflights: IGNORE
    headers:
      request: {set: {x-set: "v"}, add: {x-add: "v"}, remove: [x-remove]}
      response: {set: {x-rs: "v"}, add: {x-ra: "v"}, remove: [x-rr]}
  - match: [{uri: {prefix: /old}}]
    redirect: {uri: /new, authority: example.com, port: 8443, scheme: https, redirectCode: 308}
  - match: [{uri: {exact: /health}}]
    directResponse: {status: 200, body: {string: ok}}
  - match: [{uri: {prefix: /delegated}}]
    delegate: {name: reviews-delegate, namespace: bookinfo}
  - route: [{destination: {host: reviews}}]
    mirror: {host: shadow}
    mirrorPercentage: {value: 100}
"""

EVERY_DR_POLICY = """
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: reviews, namespace: bookinfo}
spec:
  host: reviews
  exportTo: ["*"]
  trafficPolicy:
    loadBalancer:
      consistentHash:
        httpCookie: {name: user, path: /, ttl: 0s}
        ringHash: {minimumRingSize: 1024}
      localityLbSetting:
        failover: [{from: us-east, to: us-west}]
      warmup: {duration: 30s, minimumPercent: 10, aggression: 1.5}
    connectionPool:
      tcp: {maxConnections: 100, connectTimeout: 30ms, tcpKeepalive: {probes: 3, time: 7200s, interval: 75s},
            maxConnectionDuration: 1h, idleTimeout: 5m}
      http: {http1MaxPendingRequests: 10, http2MaxRequests: 100, maxRequestsPerConnection: 1, maxRetries: 3,
             idleTimeout: 30s, h2UpgradePolicy: UPGRADE, useClientProtocol: false, maxConcurrentStreams: 100}
    outlierDetection:
      splitExternalLocalOriginErrors: true
      consecutiveLocalOriginFailures: 5
      consecutiveGatewayErrors: 3
      consecutive5xxErrors: 5
      interval: 10s
      baseEjectionTime: 3m
      maxEjectionPercent: 100
      minHealthPercent: 50
    tls: {mode: SIMPLE, caCertificates: /etc/certs/ca.pem, subjectAltNames: [reviews.example], sni: reviews.example}
    portLevelSettings:
    - port: {number: 9080}
      loadBalancer: {simple: LEAST_REQUEST}
      tls: {mode: MUTUAL, clientCertificate: /c.pem, privateKey: /k.pem}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      loadBalancer:
        simple: ROUND_ROBIN
        localityLbSetting: {distribute: [{from: "us-east/*", to: {"us-east/*": 80, "us-west/*": 20}}]}
      tls: {mode: SIMPLE, credentialName: reviews-client}
  - name: v2
    labels: {version: v2}
    trafficPolicy: {loadBalancer: {consistentHash: {maglev: {tableSize: 65537}, httpHeaderName: x-user}}}
"""


def _load(text: str) -> dict[str, Any]:
    loaded = yaml.safe_load(textwrap.dedent(text))
    assert isinstance(loaded, dict)
    return loaded


def test_every_virtual_service_field_parses() -> None:
    vs = parse_resource(_load(EVERY_VS_FIELD))
    assert isinstance(vs, VirtualService)
    first = vs.spec.http[0]
    assert first.match[0].query_params["r"].regex == "a+"
    assert first.match[0].headers["x-present"].empty
    assert first.fault is not None and first.fault.delay is not None and first.fault.delay.rate() == 10
    assert first.retries is not None and first.retries.retry_on == "5xx,connect-failure,503"
    assert first.cors_policy is not None and first.cors_policy.unmatched_preflights == "IGNORE"
    assert vs.spec.http[1].redirect is not None and vs.spec.http[1].redirect.redirect_code == 308
    assert vs.spec.http[2].direct_response is not None and vs.spec.http[2].direct_response.status == 200
    assert vs.spec.http[3].delegate is not None and vs.spec.http[3].delegate.name == "reviews-delegate"


def test_every_destination_rule_policy_parses() -> None:
    dr = parse_resource(_load(EVERY_DR_POLICY))
    assert isinstance(dr, DestinationRule)
    policy = dr.spec.traffic_policy
    assert policy is not None and policy.outlier_detection is not None
    assert policy.outlier_detection.consecutive_5xx_errors == 5
    assert policy.port_level_settings[0].port.number == 9080
    subset = dr.spec.subset("v1")
    assert subset is not None and subset.traffic_policy is not None and subset.traffic_policy.load_balancer
    distribute = subset.traffic_policy.load_balancer.locality_lb_setting
    assert distribute is not None and distribute.distribute[0].to == {"us-east/*": 80, "us-west/*": 20}


def test_a_delegate_virtual_service_has_no_hosts() -> None:
    vs = parse_resource(
        _load("""
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: reviews-delegate, namespace: bookinfo}
        spec:
          http: [{route: [{destination: {host: reviews}}]}]
        """)
    )
    assert isinstance(vs, VirtualService) and vs.spec.is_delegate


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10s", 10.0), ("0.5s", 0.5), ("250ms", 0.25), ("1m30s", 90.0), ("1h", 3600.0), ("100us", 0.0001)],
)
def test_durations_parse_as_istio_accepts_them(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_durations_convert_to_protobuf_seconds_and_nanos() -> None:
    assert seconds_nanos("1.5s") == (1, 500_000_000)
    assert seconds_nanos("250ms") == (0, 250_000_000)


def _vs(http: str) -> dict[str, Any]:
    return _load(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r, namespace: ns}\n"
        "spec:\n  hosts: [reviews]\n  http:\n" + textwrap.indent(textwrap.dedent(http), "  ")
    )


def _dr(policy: str) -> dict[str, Any]:
    return _load(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d, namespace: ns}\n"
        "spec:\n  host: reviews\n" + textwrap.indent(textwrap.dedent(policy), "  ")
    )


OK = "route: [{destination: {host: reviews}}]"

INVALID_VS = [
    # RE2, as Envoy compiles regexes: look-arounds and backreferences are not RE2
    ("- match: [{uri: {regex: '(?=a)b'}}]\n  " + OK, "spec.http[0].match[0].uri.regex", "invalid RE2 regex"),
    ("- match: [{headers: {x: {regex: '(a)\\1'}}}]\n  " + OK, "spec.http[0].match[0].headers.x.regex", "RE2"),
    ("- match: [{queryParams: {q: {regex: '['}}}]\n  " + OK, "spec.http[0].match[0].queryParams.q.regex", "RE2"),
    (
        "- match: [{authority: {regex: '" + "a" * 150 + "'}}]\n  " + OK,
        "spec.http[0].match[0].authority.regex",
        "too complex for Envoy",
    ),
    (
        "- " + OK + "\n  rewrite: {uriRegexRewrite: {match: '(?<=x)', rewrite: y}}",
        "spec.http[0].rewrite.uriRegexRewrite.match",
        "RE2",
    ),
    (
        "- " + OK + "\n  corsPolicy: {allowOrigins: [{regex: '(?!x)'}]}",
        "spec.http[0].corsPolicy.allowOrigins[0].regex",
        "RE2",
    ),
    # durations
    ("- " + OK + "\n  timeout: 1 second", "spec.http[0].timeout", "is not a duration"),
    ("- " + OK + "\n  retries: {attempts: 3, perTryTimeout: 10}", "spec.http[0].retries.perTryTimeout", "string"),
    ("- " + OK + "\n  retries: {attempts: 3, perTryTimeout: 0s}", "spec.http[0].retries.perTryTimeout", "at least 1ms"),
    ("- " + OK + "\n  fault: {delay: {fixedDelay: soon}}", "spec.http[0].fault.delay.fixedDelay", "is not a duration"),
    ("- " + OK + "\n  corsPolicy: {maxAge: 1d}", "spec.http[0].corsPolicy.maxAge", "is not a duration"),
    # weights and destinations
    (
        "- route: [{destination: {host: a}, weight: 0}, {destination: {host: b}, weight: 0}]",
        "spec.http[0].route",
        "weights add up to 0",
    ),
    (
        "- route: [{destination: {host: a}, weight: -1}, {destination: {host: b}, weight: 101}]",
        "spec.http[0].route[0].weight",
        "greater than or equal to 0",
    ),
    ("- route: [{destination: {host: ''}}]", "spec.http[0].route[0].destination.host", "at least 1 character"),
    (
        "- route: [{destination: {host: a, port: {number: 70000}}}]",
        "spec.http[0].route[0].destination.port.number",
        "less than or equal to 65535",
    ),
    # one action per route
    ("- match: [{uri: {prefix: /}}]", "spec.http[0].route", "one of route, redirect, directResponse or delegate"),
    ("- " + OK + "\n  redirect: {uri: /x}", "spec.http[0].route", "cannot also redirect"),
    ("- redirect: {uri: /x}\n  directResponse: {status: 200}", "spec.http[0].redirect", "only one of redirect"),
    ("- delegate: {name: d}\n  " + OK, "spec.http[0].delegate", "cannot also route"),
    ("- redirect: {uri: /x}\n  rewrite: {uri: /y}", "spec.http[0].rewrite", "cannot be combined"),
    # redirect / direct response
    ("- redirect: {uri: /x, redirectCode: 305}", "spec.http[0].redirect.redirectCode", "not a redirect code"),
    ("- redirect: {port: 8080, derivePort: FROM_REQUEST_PORT}", "spec.http[0].redirect.port", "only one of port"),
    ("- redirect: {scheme: ftp}", "spec.http[0].redirect.scheme", "must be http or https"),
    ("- redirect: {}", "spec.http[0].redirect.uri", "needs at least one of"),
    ("- directResponse: {status: 99}", "spec.http[0].directResponse.status", "greater than or equal to 200"),
    (
        "- directResponse: {status: 200, body: {string: a, bytes: YQ==}}",
        "spec.http[0].directResponse.body.string",
        "only one of string or bytes",
    ),
    # rewrite
    (
        "- " + OK + "\n  rewrite: {uri: /a, uriRegexRewrite: {match: a, rewrite: b}}",
        "spec.http[0].rewrite.uriRegexRewrite",
        "only one of uri or uriRegexRewrite",
    ),
    # retries
    (
        "- " + OK + "\n  retries: {attempts: 2, retryOn: 'connect-failure,sometimes'}",
        "spec.http[0].retries.retryOn",
        "'sometimes' is neither",
    ),
    ("- " + OK + "\n  retries: {attempts: -1}", "spec.http[0].retries.attempts", "greater than or equal to 0"),
    # fault
    ("- " + OK + "\n  fault: {abort: {httpStatus: 700}}", "spec.http[0].fault.abort.httpStatus", "[200, 599]"),
    (
        "- " + OK + "\n  fault: {abort: {grpcStatus: BROKEN}}",
        "spec.http[0].fault.abort.grpcStatus",
        "not a gRPC status name",
    ),
    (
        "- " + OK + "\n  fault: {abort: {httpStatus: 500, grpcStatus: INTERNAL}}",
        "spec.http[0].fault.abort.httpStatus",
        "exactly one of",
    ),
    (
        "- " + OK + "\n  fault: {abort: {httpStatus: 503, percentage: {value: 120}}}",
        "spec.http[0].fault.abort.percentage.value",
        "less than or equal to 100",
    ),
    ("- " + OK + "\n  fault: {delay: {percentage: {value: 5}}}", "spec.http[0].fault.delay.fixedDelay", "required"),
    ("- " + OK + "\n  fault: {}", "spec.http[0].fault.delay", "needs delay or abort"),
    # mirror
    (
        "- " + OK + "\n  mirror: {host: a}\n  mirrors: [{destination: {host: b}}]",
        "spec.http[0].mirrors",
        "only one of mirror or mirrors",
    ),
    (
        "- " + OK + "\n  mirror: {host: a}\n  mirrorPercentage: {value: -5}",
        "spec.http[0].mirrorPercentage.value",
        "greater than or equal to 0",
    ),
    # headers and CORS
    (
        "- " + OK + "\n  headers: {request: {set: {'bad(header)': x}}}",
        "spec.http[0].headers.request.set.bad(header)",
        "not a valid HTTP header name",
    ),
    ("- " + OK + '\n  headers: {request: {set: {x-a: "a\\nb"}}}', "spec.http[0].headers.request.set.x-a", "CR or LF"),
    (
        "- " + OK + "\n  headers: {request: {remove: [host]}}",
        "spec.http[0].headers.request.remove.host",
        "cannot be modified",
    ),
    (
        "- route: [{destination: {host: a}, headers: {response: {add: {':status': x}}}}]",
        "spec.http[0].route[0].headers.response.add.:status",
        "not a valid HTTP header name",
    ),
    (
        "- " + OK + "\n  corsPolicy: {allowOrigins: [{}]}",
        "spec.http[0].corsPolicy.allowOrigins[0]",
        "one of exact, prefix, regex is required",
    ),
    (
        "- " + OK + "\n  corsPolicy: {allowMethods: ['GET POST']}",
        "spec.http[0].corsPolicy.allowMethods[0]",
        "not an HTTP method",
    ),
    # matches
    ("- match: [{uri: {exact: /a, prefix: /}}]\n  " + OK, "spec.http[0].match[0].uri", "exactly one of"),
    ("- match: [{method: {}}]\n  " + OK, "spec.http[0].match[0].method", "one of exact, prefix, regex is required"),
    (
        "- match: [{queryParams: {q: {prefix: a}}}]\n  " + OK,
        "spec.http[0].match[0].queryParams.q",
        "prefix match is not supported",
    ),
    ("- match: [{port: 0}]\n  " + OK, "spec.http[0].match[0].port", "greater than or equal to 1"),
    # Istio's weight is an int32 and Envoy adds them up as a uint32 (99999999999 used to stop generation)
    (
        "- route: [{destination: {host: reviews}, weight: 99999999999}, {destination: {host: ratings}, weight: 1}]",
        "spec.http[0].route[0].weight",
        "less than or equal to 2147483647",
    ),
    (
        "- route: [{destination: {host: reviews}, weight: 2147483647},"
        " {destination: {host: ratings}, weight: 2147483647}, {destination: {host: details}, weight: 2}]",
        "spec.http[0].route",
        "add up to more than 4294967295",
    ),
    (
        "- match: [{headers: {'x@y': {exact: a}}}]\n  " + OK,
        "spec.http[0].match[0].headers.x@y",
        "not a valid HTTP header name",
    ),
]


@pytest.mark.parametrize(("http", "field", "message"), INVALID_VS, ids=[c[1] + ":" + c[2] for c in INVALID_VS])
def test_invalid_virtual_service_is_rejected_naming_the_field(http: str, field: str, message: str) -> None:
    with pytest.raises(InvalidResource) as info:
        parse_resource(_vs(http), origin="vs.yaml")
    assert (str(info.value.key), info.value.field) == ("VirtualService ns/r", field), info.value
    assert message in info.value.message, info.value


INVALID_DR = [
    (
        "trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN, consistentHash: {httpHeaderName: x}}}",
        "spec.trafficPolicy.loadBalancer.consistentHash",
        "only one of simple or consistentHash",
    ),
    ("trafficPolicy: {loadBalancer: {simple: FASTEST}}", "spec.trafficPolicy.loadBalancer.simple", "Input should be"),
    (
        "trafficPolicy: {loadBalancer: {consistentHash: {}}}",
        "spec.trafficPolicy.loadBalancer.consistentHash.httpHeaderName",
        "exactly one of",
    ),
    (
        "trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x, useSourceIp: true}}}",
        "spec.trafficPolicy.loadBalancer.consistentHash.httpHeaderName",
        "exactly one of",
    ),
    (
        "trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: c, ttl: forever}}}}",
        "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.ttl",
        "is not a duration",
    ),
    (
        "trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x, maglev: {tableSize: 1000}}}}",
        "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize",
        "must be a prime",
    ),
    (
        "trafficPolicy: {loadBalancer: {localityLbSetting: {distribute: [{from: a/*, to: {a/*: 50, b/*: 40}}]}}}",
        "spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to",
        "must add up to 100, got 90",
    ),
    (
        "trafficPolicy: {loadBalancer: {localityLbSetting: {failover: [{from: us-east, to: us-east}]}}}",
        "spec.trafficPolicy.loadBalancer.localityLbSetting.failover[0].to",
        "same region",
    ),
    (
        "trafficPolicy: {loadBalancer: {localityLbSetting: {distribute: [{from: a/*, to: {a/*: 100}}],"
        " failover: [{from: a, to: b}]}}}",
        "spec.trafficPolicy.loadBalancer.localityLbSetting.failover",
        "only one of distribute",
    ),
    (
        "trafficPolicy: {loadBalancer: {warmupDurationSecs: 0s}}",
        "spec.trafficPolicy.loadBalancer.warmupDurationSecs",
        "at least 1ms",
    ),
    (
        "trafficPolicy: {connectionPool: {tcp: {connectTimeout: 10}}}",
        "spec.trafficPolicy.connectionPool.tcp.connectTimeout",
        "string",
    ),
    (
        "trafficPolicy: {connectionPool: {tcp: {maxConnections: -1}}}",
        "spec.trafficPolicy.connectionPool.tcp.maxConnections",
        "greater than or equal to 0",
    ),
    (
        "trafficPolicy: {connectionPool: {http: {h2UpgradePolicy: SOMETIMES}}}",
        "spec.trafficPolicy.connectionPool.http.h2UpgradePolicy",
        "Input should be",
    ),
    (
        "trafficPolicy: {outlierDetection: {maxEjectionPercent: 101}}",
        "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
        "less than or equal to 100",
    ),
    (
        "trafficPolicy: {outlierDetection: {interval: 1x}}",
        "spec.trafficPolicy.outlierDetection.interval",
        "is not a duration",
    ),
    (
        "trafficPolicy: {outlierDetection: {consecutiveLocalOriginFailures: 2}}",
        "spec.trafficPolicy.outlierDetection.consecutiveLocalOriginFailures",
        "splitExternalLocalOriginErrors",
    ),
    (
        "trafficPolicy: {tls: {mode: MUTUAL, caCertificates: /ca.pem}}",
        "spec.trafficPolicy.tls.clientCertificate",
        "required for MUTUAL",
    ),
    (
        "trafficPolicy: {tls: {mode: MUTUAL, clientCertificate: /c.pem}}",
        "spec.trafficPolicy.tls.privateKey",
        "required for MUTUAL",
    ),
    (
        "trafficPolicy: {tls: {mode: SIMPLE, credentialName: c, caCertificates: /ca.pem}}",
        "spec.trafficPolicy.tls.credentialName",
        "cannot be combined",
    ),
    (
        "trafficPolicy: {tls: {mode: DISABLE, caCertificates: /ca.pem}}",
        "spec.trafficPolicy.tls.mode",
        "does not take certificates",
    ),
    ("trafficPolicy: {tls: {mode: SOMETIMES}}", "spec.trafficPolicy.tls.mode", "Input should be"),
    (
        "trafficPolicy: {portLevelSettings: [{port: {number: 80}}, {port: {number: 80}}]}",
        "spec.trafficPolicy.portLevelSettings[1].port",
        "listed twice",
    ),
    (
        "trafficPolicy: {portLevelSettings: [{loadBalancer: {simple: RANDOM}}]}",
        "spec.trafficPolicy.portLevelSettings[0].port",
        "Field required",
    ),
    ("subsets: [{name: v1}, {name: v1}]", "spec.subsets[1].name", "duplicate subset name"),
    ("subsets: [{name: 'a|b'}]", "spec.subsets[0].name", "cannot contain '|'"),
    (
        "subsets: [{name: v1, trafficPolicy: {loadBalancer: {simple: NEAREST}}}]",
        "spec.subsets[0].trafficPolicy.loadBalancer.simple",
        "Input should be",
    ),
]


@pytest.mark.parametrize(("policy", "field", "message"), INVALID_DR, ids=[c[1] + ":" + c[2] for c in INVALID_DR])
def test_invalid_destination_rule_is_rejected_naming_the_field(policy: str, field: str, message: str) -> None:
    with pytest.raises(InvalidResource) as info:
        parse_resource(_dr(policy), origin="dr.yaml")
    assert (str(info.value.key), info.value.field) == ("DestinationRule ns/d", field), info.value
    assert message in info.value.message, info.value
