"""RequestAuthentication through a real Envoy sidecar: real RS256/ES256 tokens (tests/jwt_tokens.py) sent to
the `web` sidecar's inbound listener, the app behind it echoing what it received. Valid tokens pass and the
app sees the payload, claim headers and (forwardOriginalToken) the token; invalid ones get 401; no token
passes (authentication only). Token locations: the default Authorization header, fromHeaders with a prefix,
fromParams, fromCookies. Keys inline, or from a jwksUri that meshd fetches from a local issuer (loopback
allowed by the test's flag): rotation without restarting Envoy, a failing issuer keeps the last good keys,
OpenID discovery, and a link-local/metadata jwksUri refused (its tokens rejected)."""

from __future__ import annotations

import json
import pathlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from tests.e2e.harness import Mesh, eventually, free_port, logs_on_failure
from tests.e2e.jwks_server import JwksServer
from tests.e2e.workloads import meshed_service_yaml
from tests.jwt_tokens import SigningKey, decode_payload, jwks, tampered, token

pytestmark = pytest.mark.e2e


ISSUER = "https://issuer.example.com"


def request_authentication(name: str, rules: list[dict[str, Any]], *, selector: bool = True) -> str:
    spec: dict[str, Any] = {"jwtRules": rules}
    if selector:
        spec["selector"] = {"matchLabels": {"app": "web"}}
    doc = {
        "apiVersion": "security.istio.io/v1",
        "kind": "RequestAuthentication",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }
    return json.dumps(doc)


@dataclass
class JwtMesh:
    mesh: Mesh
    web_ip: str
    issuer: JwksServer

    async def call(self, *, headers: dict[str, str] | None = None, path: str = "/") -> tuple[int, dict[str, str]]:
        """A request to web's sidecar (inbound 15006): (status, the headers the app received)."""
        url = f"http://{self.web_ip}:15006{path}"
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
            session.get(url, headers={"Host": "web:9080", **(headers or {})}) as resp,
        ):
            body = await resp.text()
        try:
            seen: dict[str, str] = json.loads(body)["request"]["headers"]
        except (ValueError, KeyError, TypeError):
            seen = {}
        return resp.status, seen

    async def bearer(self, jwt: str) -> int:
        status, _ = await self.call(headers={"Authorization": f"Bearer {jwt}"})
        return status

    async def verified(self, jwt: str, header: str = "x-jwt-payload") -> bool:
        """The token passed and was verified: the app got the payload header its rule outputs."""
        status, seen = await self.call(headers={"Authorization": f"Bearer {jwt}"})
        return status == 200 and header in seen

    async def applied(self, providers: int) -> None:
        """Wait until the sidecar holds a jwt_authn filter with this many providers."""

        async def check() -> bool:
            config = await self.jwt_filter()
            return config is not None and len(config["providers"]) == providers

        await eventually(check, what=f"a jwt_authn filter with {providers} providers in the sidecar")

    async def jwt_filter(self) -> dict[str, Any] | None:
        """The jwt_authn filter of the inbound listener as the Envoy holds it."""
        dump = await self.mesh.envoys["web"].config_dump(resource="dynamic_listeners")
        for listener in dump.get("configs", []):
            active = listener.get("active_state", {}).get("listener", {})
            if active.get("name") != "virtualInbound":
                continue
            for chain in active.get("filter_chains", []):
                for http_filter in chain["filters"][0]["typed_config"].get("http_filters", []):
                    if http_filter["name"] == "envoy.filters.http.jwt_authn":
                        found: dict[str, Any] = http_filter["typed_config"]
                        return found
        return None


@pytest.fixture
async def jwt_mesh(tmp_path: pathlib.Path) -> AsyncIterator[JwtMesh]:
    args = ("--jwks-allow-loopback", "--jwks-refresh-interval", "0.5", "--jwks-retry-interval", "0.2")
    async with logs_on_failure(Mesh(work_dir=tmp_path, delta=False, meshd_args=args)) as mesh:
        web_ip = mesh.ip(2)
        issuer = await JwksServer(host=mesh.ip(60), port=free_port(), keys=[]).start()
        try:
            web = meshed_service_yaml("web", ip=web_ip, selector=True, sidecar=False, slice_name="web-1")
            mesh.write("mesh.yaml", web)
            await mesh.meshd.start()
            await mesh.app(service="web", version="v1", pod="web", ip=web_ip)
            await mesh.sidecar(pod="web", ip=web_ip)
            m = JwtMesh(mesh, web_ip, issuer)
            await eventually(lambda: _status(m, 200), what="the web sidecar serving")
            yield m
        finally:
            await issuer.stop()


async def _status(m: JwtMesh, expected: int, headers: dict[str, str] | None = None, path: str = "/") -> bool:
    status, _ = await m.call(headers=headers, path=path)
    return status == expected


async def _config_errors(m: JwtMesh, needle: str) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = await m.mesh.meshd.get_json("/debug/config_errors")
    return [e for e in errors if needle in json.dumps(e)]


async def test_tokens_are_verified_and_their_claims_reach_the_app(jwt_mesh: JwtMesh) -> None:
    m = jwt_mesh
    rsa, ec_key, other = SigningKey("rsa-1"), SigningKey("ec-1", kind="EC"), SigningKey("rsa-2")
    m.mesh.write(
        "ra.yaml",
        request_authentication(
            "web",
            [
                {
                    "issuer": ISSUER,
                    "audiences": ["web", "web-admin"],
                    "jwks": jwks(rsa, ec_key),
                    "outputPayloadToHeader": "x-jwt-payload",
                    "outputClaimToHeaders": [
                        {"header": "x-jwt-sub", "claim": "sub"},
                        {"header": "x-jwt-group", "claim": "org.group"},
                    ],
                    "forwardOriginalToken": True,
                }
            ],
        ),
    )
    good = token(rsa, issuer=ISSUER, aud="web", sub="alice", org={"group": "admins"})
    await m.applied(1)
    config = await m.jwt_filter()
    assert config is not None and config["providers"]["origins-0"]["payload_in_metadata"] == "payload", config

    status, seen = await m.call(headers={"Authorization": f"Bearer {good}"})
    assert status == 200, seen
    payload = decode_payload(seen["x-jwt-payload"])
    assert (payload["iss"], payload["sub"], payload["org"]) == (ISSUER, "alice", {"group": "admins"})
    assert seen["x-jwt-sub"] == "alice" and seen["x-jwt-group"] == "admins", seen
    assert seen["authorization"] == f"Bearer {good}"  # forwardOriginalToken
    # an ES256 token from the EC key of the same set, and the second audience
    assert await m.bearer(token(ec_key, issuer=ISSUER, aud="web-admin", sub="bob")) == 200

    # invalid tokens: 401 (Envoy's answer, as under Istio); none of them reaches the app
    received = len(m.mesh.apps[0].received)
    for bad in (
        tampered(good),  # signature does not match
        token(rsa, issuer=ISSUER, aud="web", expires_in=-120),  # expired (beyond the 60 s clock skew)
        token(rsa, issuer="https://someone-else.example.com", aud="web"),  # an issuer no rule names
        token(other, issuer=ISSUER, aud="web"),  # a key not in the set
        "not-a-jwt",
    ):
        assert await m.bearer(bad) == 401, bad
    # a wrong audience: Envoy answers 403 ("Audiences in Jwt are not allowed"), as it does under Istio
    assert await m.bearer(token(rsa, issuer=ISSUER, aud="not-web")) == 403
    assert len(m.mesh.apps[0].received) == received

    # a client cannot forge the payload or claim headers: the sidecar drops them, token or not
    status, seen = await m.call(headers={"x-jwt-payload": "forged", "x-jwt-sub": "forged"})
    assert status == 200 and "x-jwt-payload" not in seen and "x-jwt-sub" not in seen, seen
    status, seen = await m.call(headers={"x-jwt-payload": "forged", "Authorization": f"Bearer {good}"})
    assert status == 200 and decode_payload(seen["x-jwt-payload"])["sub"] == "alice", seen

    # no token: authentication passes, with no identity (AuthorizationPolicy would decide)
    status, seen = await m.call()
    assert status == 200 and "x-jwt-payload" not in seen and "x-jwt-sub" not in seen, seen


async def test_token_locations_headers_params_cookies(jwt_mesh: JwtMesh) -> None:
    m = jwt_mesh
    key_h, key_p, key_c = SigningKey("h"), SigningKey("p"), SigningKey("c", kind="EC")
    m.mesh.write(
        "ra.yaml",
        request_authentication(
            "web",
            [
                {
                    "issuer": "issuer-header",
                    "jwks": jwks(key_h),
                    "fromHeaders": [{"name": "x-auth", "prefix": "Token "}],
                },
                {"issuer": "issuer-param", "jwks": jwks(key_p), "fromParams": ["tok"]},
                {"issuer": "issuer-cookie", "jwks": jwks(key_c), "fromCookies": ["session"]},
            ],
        ),
    )
    by_header = token(key_h, issuer="issuer-header")
    await m.applied(3)
    assert await m.call(headers={"x-auth": f"Token {tampered(by_header)}"}) == (401, {})
    # the token is consumed (forwardOriginalToken unset): the app does not see the header
    status, seen = await m.call(headers={"x-auth": f"Token {by_header}"})
    assert status == 200 and "x-auth" not in seen, seen
    # a token of a rule that reads only x-auth is not looked for in Authorization: missing, so it passes
    assert await m.bearer(by_header) == 200

    by_param = token(key_p, issuer="issuer-param")
    assert await _status(m, 200, path=f"/?tok={by_param}")
    assert await _status(m, 401, path=f"/?tok={tampered(by_param)}")

    by_cookie = token(key_c, issuer="issuer-cookie")
    assert await _status(m, 200, {"Cookie": f"other=1; session={by_cookie}"})
    assert await _status(m, 401, {"Cookie": f"session={tampered(by_cookie)}"})
    # a token valid for one location's issuer but presented at another's: 401
    assert await _status(m, 401, path=f"/?tok={by_cookie}")


async def test_jwks_uri_rotation_outage_and_discovery(jwt_mesh: JwtMesh) -> None:
    m = jwt_mesh
    old, new = SigningKey("k-old"), SigningKey("k-new", kind="EC")
    m.issuer.keys = [old]
    m.mesh.write(
        "ra.yaml",
        request_authentication(
            "web",
            [
                {"issuer": "issuer-uri", "jwksUri": m.issuer.jwks_uri, "outputPayloadToHeader": "x-jwt-payload"},
                # no jwksUri: OpenID discovery of the issuer
                {"issuer": m.issuer.base, "outputPayloadToHeader": "x-discovered"},
            ],
        ),
    )
    old_token = token(old, issuer="issuer-uri", sub="old")
    await m.applied(2)
    await eventually(lambda: m.verified(old_token), what="keys fetched by meshd")
    await eventually(lambda: m.verified(token(old, issuer=m.issuer.base), "x-discovered"), what="discovered keys")
    assert m.issuer.requests["discovery"] >= 1
    assert 'meshd_jwks_fetches{result="ok"}' in await m.mesh.meshd.metrics()
    envoy_pid = m.mesh.envoys["web"].pid

    # rotation: the issuer serves the new key only; meshd refetches on its interval and pushes
    m.issuer.keys = [new]
    new_token = token(new, issuer="issuer-uri", sub="new")
    await eventually(lambda: m.verified(new_token), what="the rotated key")
    assert await m.bearer(old_token) == 401  # the removed key's tokens are rejected
    assert m.mesh.envoys["web"].pid == envoy_pid and m.mesh.envoys["web"].returncode is None

    # the issuer fails: the last good keys stay in use, a warning names the policy and the URL
    m.issuer.failing = True
    failed_before = m.issuer.requests["jwks"]
    await eventually(lambda: _config_errors(m, "the last keys fetched stay in use"), what="the failed refresh reported")
    await eventually(lambda: _true(m.issuer.requests["jwks"] >= failed_before + 3), what="several failed refreshes")
    for _ in range(3):
        assert await m.verified(new_token)
    errors = await _config_errors(m, "the last keys fetched stay in use")
    assert {e["resource"] for e in errors} == {"RequestAuthentication default/web"}, errors
    by_field = {e["field"]: e for e in errors}
    assert set(by_field) == {"spec.jwtRules[0].jwksUri", "spec.jwtRules[1].issuer"}, errors  # jwksUri, discovery
    assert "HTTP 500" in by_field["spec.jwtRules[0].jwksUri"]["message"], errors
    assert all(e["severity"] == "warning" for e in errors), errors
    assert 'meshd_jwks_fetches{result="failed"}' in await m.mesh.meshd.metrics()
    assert "event=jwks_fetch_failed" in m.mesh.meshd.log()

    # recovered: the warning goes away
    m.issuer.failing = False
    await eventually(lambda: _none(_config_errors(m, "keys from")), what="the warning cleared")


async def test_link_local_and_metadata_jwks_uri_refused(jwt_mesh: JwtMesh) -> None:
    m = jwt_mesh
    key = SigningKey("k")
    m.issuer.keys = [key]
    m.mesh.write(
        "ra.yaml",
        request_authentication(
            "web",
            [
                {"issuer": "metadata", "jwksUri": "http://169.254.169.254/latest/keys"},
                {"issuer": "link-local", "jwksUri": "http://[fe80::1]:8080/keys"},
                {"issuer": "fine", "jwksUri": m.issuer.jwks_uri, "outputPayloadToHeader": "x-jwt-payload"},
            ],
        ),
    )
    await m.applied(3)
    await eventually(lambda: _refusals(m, 2), what="both refusals reported")
    errors = await _config_errors(m, "refused")
    messages = {e["field"]: e["message"] for e in errors}
    assert "cloud metadata address" in messages["spec.jwtRules[0].jwksUri"], messages
    assert "link-local address" in messages["spec.jwtRules[1].jwksUri"], messages
    assert all("every token of this rule is rejected" in msg for msg in messages.values())
    assert 'meshd_jwks_fetches{result="refused"}' in await m.mesh.meshd.metrics()
    # the refused rules fail closed (placeholder keys); the good one works once fetched
    await eventually(lambda: m.verified(token(key, issuer="fine")), what="the allowed jwksUri's keys")
    assert await m.bearer(token(key, issuer="metadata")) == 401
    assert await m.bearer(token(key, issuer="link-local")) == 401


async def test_an_invalid_request_authentication_fails_closed_with_its_field(jwt_mesh: JwtMesh) -> None:
    m = jwt_mesh
    key, other_key = SigningKey("k"), SigningKey("o", kind="EC")
    good = [{"issuer": "good", "jwks": jwks(key), "outputPayloadToHeader": "x-jwt-payload"}]
    other = [{"issuer": "other", "jwks": jwks(other_key), "outputPayloadToHeader": "x-other"}]
    m.mesh.write("ra.yaml", request_authentication("web", good))
    m.mesh.write("other.yaml", request_authentication("other", other, selector=False))  # namespace-wide
    await m.applied(2)
    assert await m.verified(token(key, issuer="good"))

    # a bad edit: reported with its field, and the policy fails closed (tokens where it looks are rejected:
    # a revoked issuer removed by that edit must not keep working), other policies' tokens still verify
    bad = [{**good[0], "outputClaimToHeaders": [{"header": "x y", "claim": "sub"}]}]
    m.mesh.write("ra.yaml", request_authentication("web", bad))
    errors = await eventually(lambda: _config_errors(m, "outputClaimToHeaders"), what="the refusal reported")
    assert errors[0]["resource"] == "RequestAuthentication default/web", errors
    assert errors[0]["field"] == "spec.jwtRules[0].outputClaimToHeaders[0].header", errors
    assert "not a valid" in errors[0]["message"] or "must match" in errors[0]["message"], errors
    await eventually(lambda: _status(m, 401, {"Authorization": f"Bearer {token(key, issuer='good')}"}), what="closed")
    assert await m.verified(token(other_key, issuer="other"), "x-other")
    assert await _status(m, 200)  # no token: authentication passes
    config = await m.jwt_filter()
    assert config is not None and "meshd: refused RequestAuthentication default/web" in json.dumps(config)

    # fixed: verified again
    m.mesh.write("ra.yaml", request_authentication("web", good))
    await eventually(lambda: m.verified(token(key, issuer="good")), what="the fixed policy")
    assert await _none(_config_errors(m, "outputClaimToHeaders"))


def authorization_policy(name: str, rules: list[dict[str, Any]]) -> str:
    return json.dumps(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "action": "ALLOW", "rules": rules},
        }
    )


async def test_authorization_policy_decides_on_the_verified_token(jwt_mesh: JwtMesh) -> None:
    """Istio's "require a JWT" pattern: RequestAuthentication verifies, an ALLOW policy with
    `requestPrincipals` rejects requests without a token (403), and `when` matches verified claims."""
    m = jwt_mesh
    key = SigningKey("k")
    m.mesh.write("ra.yaml", request_authentication("web", [{"issuer": ISSUER, "jwks": jwks(key)}]))
    m.mesh.write("ap.yaml", authorization_policy("require-jwt", [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]))
    alice = token(key, issuer=ISSUER, sub="alice", groups=["admins", "dev"])
    bob = token(key, issuer=ISSUER, sub="bob", groups=["users"])
    await eventually(lambda: _status(m, 403), what="a request without a token denied")
    assert await m.bearer(alice) == 200 and await m.bearer(bob) == 200
    assert await m.bearer(tampered(alice)) == 401  # authentication rejects first
    assert await m.bearer(token(SigningKey("x"), issuer=ISSUER)) == 401

    # a principal: <iss>/<sub>
    m.mesh.write(
        "ap.yaml",
        authorization_policy("require-jwt", [{"from": [{"source": {"requestPrincipals": [f"{ISSUER}/alice"]}}]}]),
    )
    await eventually(lambda: _true_status(m, bob, 403), what="only alice's principal allowed")
    assert await m.bearer(alice) == 200

    # a claims-based condition: request.auth.claims[groups] (a list claim: any of its values)
    m.mesh.write(
        "ap.yaml",
        authorization_policy("require-jwt", [{"when": [{"key": "request.auth.claims[groups]", "values": ["admins"]}]}]),
    )
    carol = token(key, issuer=ISSUER, sub="carol", groups=["admins"])
    await eventually(lambda: _true_status(m, carol, 200), what="the claims condition in effect")
    assert await m.bearer(alice) == 200
    assert await m.bearer(bob) == 403  # groups [users]
    assert await _status(m, 403)  # no token, no claims


async def _true_status(m: JwtMesh, jwt: str, expected: int) -> bool:
    return await m.bearer(jwt) == expected


async def _refusals(m: JwtMesh, count: int) -> bool:
    return len(await _config_errors(m, "refused")) >= count


async def _true(value: bool) -> bool:
    return value


async def _none(found: Any) -> bool:
    return not await found
