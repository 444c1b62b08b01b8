"""The RFC 6749 token endpoint (`harness serve`) against the real database: grants, errors, bad bodies."""

from __future__ import annotations

import base64
import contextlib
import hmac
import logging
import os
import socket
import subprocess
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from conftest import REDIRECT, StoreCode, interrupt

with warnings.catch_warnings():
    # Starlette 1.x nudges towards httpx2 for its test client; httpx (a dev dependency) still works.
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from harness import rfc7636
from harness.at_rest import hash_at_rest
from harness.database import Database, connect
from harness.errors import INVALID_CODE
from harness.repository import OAuthRepository
from harness.sut import token_server as rfc6749_endpoint
from harness.sut.token_server import MAX_BODY_BYTES, ClientCredentials, TokenError, create_app
from harness.targets import load_target
from harness.testing.plugin import CLIENT, OTHER_CLIENT

FORM = "application/x-www-form-urlencoded"
Post = Callable[..., Any]


@pytest.fixture
def client(faithful: OAuthRepository) -> Iterator[TestClient]:
    with TestClient(create_app(faithful), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def post(client: TestClient) -> Post:
    """``post(body, content_type=FORM, **kwargs)``: a raw POST /token."""

    def send(body: bytes | str, content_type: str | None = FORM, **kwargs: Any) -> Any:
        headers = dict(kwargs.pop("headers", {}))
        if content_type is not None:
            headers["Content-Type"] = content_type
        content = body.encode() if isinstance(body, str) else body
        return client.post("/token", content=content, headers=headers, **kwargs)

    return send


def assert_error(resp: Any, error: str, status: int = 400) -> dict[str, Any]:
    """An RFC 6749 §5.2 error: status, JSON body with ``error``, never cached."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.headers["cache-control"] == "no-store"
    assert resp.headers["pragma"] == "no-cache"
    body: dict[str, Any] = resp.json()
    assert body["error"] == error, body
    assert isinstance(body["error_description"], str)
    assert "Traceback" not in resp.text
    return body


def exchange_form(code: str, **extra: str) -> str:
    from urllib.parse import urlencode

    return urlencode({"grant_type": "authorization_code", "code": code, "client_id": CLIENT,
                      "redirect_uri": REDIRECT, **extra})


def test_authorization_code_then_refresh_succeed(post: Post, store_code: StoreCode,
                                                 faithful: OAuthRepository) -> None:
    verifier = rfc7636.new_verifier()
    store_code("c1", code_challenge=rfc7636.s256_challenge(verifier), code_challenge_method="S256")
    resp = post(exchange_form("c1", code_verifier=verifier))
    assert resp.status_code == 200, resp.text
    assert resp.headers["cache-control"] == "no-store" and resp.headers["pragma"] == "no-cache"
    body = resp.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token", "scope"}
    assert body["token_type"] == "Bearer" and body["scope"] == "openid profile"
    assert faithful.introspect_access_token(body["access_token"]) is not None

    resp = post(f"grant_type=refresh_token&refresh_token={body['refresh_token']}&client_id={CLIENT}")
    assert resp.status_code == 200, resp.text
    rotated = resp.json()
    assert rotated["refresh_token"] != body["refresh_token"]
    # the rotated-out token is dead (RFC 9700 §4.14.2)
    again = post(f"grant_type=refresh_token&refresh_token={body['refresh_token']}&client_id={CLIENT}")
    assert_error(again, "invalid_grant")


def test_spent_unknown_and_wrong_verifier_codes_are_the_same_invalid_grant(
    post: Post, store_code: StoreCode
) -> None:
    store_code("c1")
    assert post(exchange_form("c1")).status_code == 200
    spent = assert_error(post(exchange_form("c1")), "invalid_grant")
    unknown = assert_error(post(exchange_form("never-issued")), "invalid_grant")
    store_code("c2", code_challenge=rfc7636.s256_challenge(rfc7636.new_verifier()),
               code_challenge_method="S256")
    wrong = assert_error(post(exchange_form("c2", code_verifier=rfc7636.new_verifier())), "invalid_grant")
    # RFC 6749 §5.2: one public message; the caller cannot tell the cases apart
    assert spent == unknown == wrong == {"error": "invalid_grant", "error_description": INVALID_CODE}


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("code=c1&client_id=client-a", "invalid_request"),                              # no grant_type
        ("grant_type=password&username=u&password=p&client_id=client-a", "unsupported_grant_type"),
        ("grant_type=client_credentials&client_id=client-a", "unsupported_grant_type"),
        ("grant_type=authorization_code&client_id=client-a", "invalid_request"),        # no code
        ("grant_type=refresh_token&client_id=client-a", "invalid_request"),             # no refresh_token
        ("grant_type=authorization_code&code=c1", "invalid_request"),                   # no client_id
        ("grant_type=authorization_code&code=&client_id=client-a", "invalid_request"),  # empty = omitted
    ],
)
def test_rfc_error_cases(post: Post, store_code: StoreCode, body: str, error: str) -> None:
    store_code("c1")
    assert_error(post(body), error)


def test_unknown_client_is_invalid_client(post: Post, store_code: StoreCode) -> None:
    store_code("c1")
    resp = post("grant_type=authorization_code&code=c1&client_id=nobody")
    assert_error(resp, "invalid_client", 401)
    # refused before the claim: the code is still redeemable
    assert post(exchange_form("c1")).status_code == 200


def test_confidential_client_must_prove_its_secret(
    db: Database, post: Post, store_code: StoreCode, pepper: str
) -> None:
    with db.connect() as conn:
        conn.execute("UPDATE oauth_clients SET client_secret_hash = %s WHERE client_id = %s",
                     (hash_at_rest("s3cret", pepper), OTHER_CLIENT))
    for code in ("b1", "b2", "b3"):
        store_code(code, client_id=OTHER_CLIENT)
    base = f"grant_type=authorization_code&redirect_uri={REDIRECT}"
    assert_error(post(f"{base}&code=b1&client_id={OTHER_CLIENT}"), "invalid_client", 401)
    assert_error(post(f"{base}&code=b1&client_id={OTHER_CLIENT}&client_secret=wrong"),
                 "invalid_client", 401)
    assert post(f"{base}&code=b1&client_id={OTHER_CLIENT}&client_secret=s3cret").status_code == 200
    # RFC 6749 §2.3.1: HTTP Basic
    basic = "Basic " + base64.b64encode(f"{OTHER_CLIENT}:s3cret".encode()).decode()
    assert post(f"{base}&code=b2", headers={"Authorization": basic}).status_code == 200
    bad = "Basic " + base64.b64encode(f"{OTHER_CLIENT}:nope".encode()).decode()
    resp = post(f"{base}&code=b3", headers={"Authorization": bad})
    assert_error(resp, "invalid_client", 401)
    assert resp.headers["www-authenticate"].startswith("Basic")
    # RFC 6749 §2.3: one authentication method per request
    assert_error(post(f"{base}&code=b3&client_secret=s3cret", headers={"Authorization": basic}),
                 "invalid_request")
    assert_error(post(f"{base}&code=b3", headers={"Authorization": "Basic !!notbase64"}),
                 "invalid_client", 401)
    assert_error(post(f"{base}&code=b3", headers={"Authorization": "Bearer abc"}), "invalid_client", 401)


@pytest.mark.parametrize(
    ("case", "creds", "outcome"),
    [
        ("unknown client", ClientCredentials("nobody", "s3cret", basic=False), "invalid_client"),
        ("unknown client, no secret", ClientCredentials("nobody", None, basic=False), "invalid_client"),
        ("public client", ClientCredentials(CLIENT, None, basic=False), "ok"),
        ("public client sending a secret", ClientCredentials(CLIENT, "anything", basic=False), "ok"),
        ("confidential, right secret", ClientCredentials(OTHER_CLIENT, "s3cret", basic=True), "ok"),
        ("confidential, wrong secret", ClientCredentials(OTHER_CLIENT, "s3creT", basic=True),
         "invalid_client"),
        ("confidential, no secret", ClientCredentials(OTHER_CLIENT, None, basic=False), "invalid_client"),
    ],
)
def test_client_authentication_does_the_same_work_on_every_path(
    db: Database, faithful: OAuthRepository, pepper: str, monkeypatch: pytest.MonkeyPatch,
    case: str, creds: ClientCredentials, outcome: str,
) -> None:
    """One HMAC of the presented secret (or a dummy) and one constant-time compare, whatever the path.

    Counted, not timed: the count is deterministic, a timing is not. An
    unknown client, a public one and a wrong secret then cost the same as a
    right one, so the response time tells nothing about which clients exist.
    To see the times by hand: ``time_client_authentication``.
    """
    with db.connect() as conn:
        conn.execute("UPDATE oauth_clients SET client_secret_hash = %s WHERE client_id = %s",
                     (hash_at_rest("s3cret", pepper), OTHER_CLIENT))
    calls: Counter[str] = Counter()
    real_hash, real_compare = hash_at_rest, hmac.compare_digest

    def spy_hash(value: str, key: str | bytes | None) -> str:
        calls["hash_at_rest"] += 1
        return real_hash(value, key)

    def spy_compare(a: bytes, b: bytes) -> bool:
        calls["compare_digest"] += 1
        return real_compare(a, b)

    monkeypatch.setattr(rfc6749_endpoint, "hash_at_rest", spy_hash)
    monkeypatch.setattr(rfc6749_endpoint, "compare_digest", spy_compare)
    try:
        rfc6749_endpoint.authenticate_client(faithful, creds)
        result = "ok"
    except TokenError as exc:
        result = exc.error
    assert result == outcome, case
    assert calls == {"hash_at_rest": 1, "compare_digest": 1}, case


def time_client_authentication(rounds: int = 3000) -> dict[str, float]:
    """Median microseconds of ``authenticate_client`` per case: run by hand, never by pytest.

    Times on a shared machine are noise for a test; by hand, they show the
    paths cost alike (the database lookup dominates)::

        HARNESS_AT_REST_PEPPER=x .venv/bin/python -c "import sys; sys.path.insert(0, 'tests'); \\
            from test_http_endpoint import time_client_authentication as t; print(t())"

    Uses the embedded server of ``HARNESS_DATA_DIR`` (or a URL in
    ``HARNESS_DATABASE_URL``); the two clients it adds are removed at the end.
    """
    import statistics

    import harness

    pepper = os.environ["HARNESS_AT_REST_PEPPER"]
    public, confidential = "timing-public-client", "timing-confidential-client"
    with harness.connect() as database:
        target = load_target("faithful", database, pepper=pepper)
        with database.connect() as conn:
            conn.execute("INSERT INTO oauth_clients (client_id, client_secret_hash) VALUES (%s, NULL), "
                         "(%s, %s)", (public, confidential, hash_at_rest("s3cret", pepper)))
        cases = {
            "unknown client": ClientCredentials("timing-nobody", "s3cret", basic=False),
            "public client": ClientCredentials(public, None, basic=False),
            "right secret": ClientCredentials(confidential, "s3cret", basic=False),
            "wrong secret": ClientCredentials(confidential, "s3creT", basic=False),
            "no secret": ClientCredentials(confidential, None, basic=False),
        }
        samples: dict[str, list[float]] = {case: [] for case in cases}
        try:
            for _ in range(rounds):
                for case, creds in cases.items():  # interleaved: drift hits every case alike
                    started = time.perf_counter()
                    with contextlib.suppress(TokenError):
                        rfc6749_endpoint.authenticate_client(target, creds)
                    samples[case].append(time.perf_counter() - started)
        finally:
            with database.connect() as conn:
                conn.execute("DELETE FROM oauth_clients WHERE client_id IN (%s, %s)", (public, confidential))
    return {case: round(statistics.median(times) * 1e6, 1) for case, times in samples.items()}


def test_a_trailing_slash_is_a_404_never_a_redirect(client: TestClient) -> None:
    # Starlette's redirect_slashes would answer 307 with a Location built from the Host header
    # (http://evil.example/token): a client following it sends its code and secret there.
    for method, path in (("POST", "/token/"), ("GET", "/healthz/"), ("POST", "//token")):
        resp = client.request(method, path, content=exchange_form("c1"), follow_redirects=False,
                              headers={"Content-Type": FORM, "Host": "evil.example"})
        assert resp.status_code == 404, (method, path)
        assert "location" not in resp.headers
        assert_error(resp, "invalid_request", 404)


def test_two_authorization_headers_are_invalid_request(client: TestClient, store_code: StoreCode) -> None:
    store_code("c1")
    basic = "Basic " + base64.b64encode(f"{CLIENT}:x".encode()).decode()
    other = "Basic " + base64.b64encode(f"{OTHER_CLIENT}:y".encode()).decode()
    for first, second in ((basic, other), (basic, basic)):
        headers = httpx.Headers([("Content-Type", FORM), ("Authorization", first), ("Authorization", second)])
        assert_error(client.post("/token", content=exchange_form("c1"), headers=headers), "invalid_request")
    resp = client.post("/token", content=exchange_form("c1"), headers={"Content-Type": FORM})
    assert resp.status_code == 200  # refused before the claim: the code is still good


@pytest.mark.parametrize(
    "raw",
    [
        b"client-a\x00:s3cret", b"client-a:s3\x00cret", b"client-a%00:s3cret", b"client-a:s3cret%00",
        b"client\x01-a:s3cret", b"client-a:s3cret\x7f", b"client-a:\r\n", "client-a\u0085:s".encode(),
        b"\xff\xfe:s3cret", b"client-a:\xc3", b"client-a%FF:s3cret", b"client-a:%C3%28",
        b"client-a:" + b"s" * 5000,
    ],
)
def test_control_characters_and_bad_utf8_in_basic_credentials_are_invalid_client(
    client: TestClient, store_code: StoreCode, raw: bytes
) -> None:
    store_code("c1")
    header = "Basic " + base64.b64encode(raw).decode()
    resp = client.post("/token", content="grant_type=authorization_code&code=c1",
                       headers={"Content-Type": FORM, "Authorization": header})
    assert_error(resp, "invalid_client", 401)
    assert resp.headers["www-authenticate"].startswith("Basic")


def test_non_ascii_bytes_in_the_authorization_header_are_invalid_client(client: TestClient) -> None:
    headers = httpx.Headers([(b"Content-Type", FORM.encode()), (b"Authorization", b"Basic \xe9\xe9\xe9\xe9")])
    resp = client.post("/token", content="grant_type=authorization_code&code=c1", headers=headers)
    assert_error(resp, "invalid_client", 401)


@pytest.mark.parametrize(
    ("name", "body", "content_type"),
    [
        ("json", '{"grant_type": "authorization_code"}', "application/json"),
        ("text", "grant_type=authorization_code", "text/plain"),
        ("no content type", "grant_type=authorization_code", None),
        ("multipart", "--x\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--x--",
         "multipart/form-data; boundary=x"),
        ("latin-1 charset", "grant_type=authorization_code", f"{FORM}; charset=iso-8859-1"),
        ("field without =", "grant_type", FORM),
        ("empty field", "grant_type=authorization_code&&code=c1", FORM),
        ("bad percent escape", "grant_type=authorization_code&code=%zz&client_id=client-a", FORM),
        ("escape not UTF-8", "grant_type=authorization_code&code=%FF%FE&client_id=client-a", FORM),
        ("NUL", "grant_type=authorization_code&code=c1%00x&client_id=client-a", FORM),
        ("duplicate code", "grant_type=authorization_code&code=c1&code=c1&client_id=client-a", FORM),
        ("duplicate grant_type",
         "grant_type=authorization_code&grant_type=authorization_code&code=c1&client_id=client-a", FORM),
        ("duplicate, one empty", "grant_type=authorization_code&code=c1&code=&client_id=client-a", FORM),
        ("huge code", "grant_type=authorization_code&client_id=client-a&code=" + "a" * 5000, FORM),
        ("too many fields", "&".join(f"f{i}=1" for i in range(100)), FORM),
        ("empty body", "", FORM),
    ],
)
def test_bad_bodies_are_400_invalid_request_and_lose_nothing(
    post: Post, store_code: StoreCode, name: str, body: str, content_type: str | None
) -> None:
    store_code("c1")
    assert_error(post(body, content_type), "invalid_request")
    # bad input spends nothing: the code still redeems
    assert post(exchange_form("c1")).status_code == 200, name


def test_raw_non_ascii_bytes_are_refused(post: Post, store_code: StoreCode) -> None:
    store_code("c1")
    body = "grant_type=authorization_code&client_id=client-a&code=c1é".encode()
    assert_error(post(body), "invalid_request")
    assert_error(post(b"grant_type=authorization_code&code=\xff&client_id=client-a"), "invalid_request")
    assert post(exchange_form("c1")).status_code == 200


def test_percent_encoded_unicode_code_is_just_an_unknown_code(post: Post) -> None:
    # well-formed UTF-8 after decoding: a valid request for a code that does not exist
    assert_error(post("grant_type=authorization_code&code=%C3%A9t%C3%A9&client_id=client-a"),
                 "invalid_grant")


def test_oversized_bodies_are_refused_without_reading_them(client: TestClient) -> None:
    sent: list[int] = []

    def chunks() -> Iterator[bytes]:
        # a streamed (chunked) body: the endpoint stops reading past the cap
        for _ in range(1000):
            sent.append(1)
            yield b"a" * 1024

    resp = client.post("/token", content=chunks(), headers={"Content-Type": FORM})
    assert_error(resp, "invalid_request")
    assert "larger than" in resp.json()["error_description"]
    big = b"grant_type=authorization_code&code=" + b"a" * (MAX_BODY_BYTES + 1)
    resp = client.post("/token", content=big, headers={"Content-Type": FORM})
    assert_error(resp, "invalid_request")
    resp = client.post("/token", content=b"grant_type=x",
                       headers={"Content-Type": FORM, "Content-Length": "abc"})
    assert resp.status_code == 400


def test_wrong_method_and_unknown_path_are_json(client: TestClient) -> None:
    resp = client.get("/token")
    assert_error(resp, "invalid_request", 405)
    assert client.get("/nope").status_code == 404


def test_server_error_is_a_json_500_without_a_trace(make_target: Callable[..., OAuthRepository],
                                                    store_code: StoreCode) -> None:
    store_code("c1")
    no_pepper = make_target("faithful", pepper="")
    with TestClient(create_app(no_pepper), raise_server_exceptions=False) as c:
        resp = c.post("/token", content=exchange_form("c1"), headers={"Content-Type": FORM})
    assert_error(resp, "server_error", 500)


def test_healthz_checks_the_database(client: TestClient, database: Database, pepper: str) -> None:
    resp = client.get("/healthz")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok", "target": "faithful", "database": "ok"}
    gone = connect(database.url, migrate=False)
    target = load_target("faithful", gone, pepper=pepper)
    gone.close()
    with TestClient(create_app(target), raise_server_exceptions=False) as c:
        resp = c.get("/healthz")
    assert resp.status_code == 503 and resp.json()["status"] == "unavailable"


class _Unanswering:
    """A target whose database takes the connection and never answers (a paused server)."""

    name = "unanswering"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.db = self

    @property
    def read_pool(self) -> _Unanswering:
        return self

    @contextlib.contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[None]:
        time.sleep(self.seconds)
        yield

    def exchange_code(self, *args: object) -> Any:
        time.sleep(self.seconds)
        raise AssertionError("the endpoint should have given up on this grant")


def test_a_database_that_never_answers_is_a_503_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    # The pool's timeout answers a stopped database; these deadlines answer one that accepts and
    # then says nothing, where a thread blocked in a socket read can only be abandoned.
    monkeypatch.setattr(rfc6749_endpoint, "GRANT_DEADLINE_S", 0.3)
    monkeypatch.setattr(rfc6749_endpoint, "HEALTH_TIMEOUT_S", 0.2)
    monkeypatch.setattr(rfc6749_endpoint, "authenticate_client", lambda target, creds: None)
    target = cast(OAuthRepository, _Unanswering(1.5))
    with TestClient(create_app(target), raise_server_exceptions=False) as c:
        started = time.monotonic()
        resp = c.post("/token", content=exchange_form("c1"), headers={"Content-Type": FORM})
        assert time.monotonic() - started < 1.2
        assert_error(resp, "temporarily_unavailable", 503)
        assert int(resp.headers["retry-after"]) > 0
        started = time.monotonic()
        resp = c.get("/healthz")
        assert time.monotonic() - started < 1.4
        assert resp.status_code == 503 and resp.json()["status"] == "unavailable"


def test_app_from_environment_serves_the_named_target(
    database: Database, db: Database, pepper: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HARNESS_DATABASE_URL", database.url)
    monkeypatch.setenv("HARNESS_TARGET", "naive")
    monkeypatch.setenv("HARNESS_AT_REST_PEPPER", pepper)
    with TestClient(create_app(None)) as c:
        assert c.get("/healthz").json()["target"] == "naive"


def test_no_secret_reaches_the_endpoint_log(post: Post, store_code: StoreCode,
                                            caplog: pytest.LogCaptureFixture) -> None:
    store_code("secret-code-xyz")
    with caplog.at_level(logging.DEBUG, logger="harness.http"):
        body = post(exchange_form("secret-code-xyz")).json()
        post(exchange_form("secret-code-xyz"))
        post(f"grant_type=refresh_token&refresh_token={body['refresh_token']}&client_id={CLIENT}")
        post("grant_type=authorization_code&code=secret-code-xyz%00&client_id=client-a")
    http_lines = " ".join(r.getMessage() for r in caplog.records if r.name == "harness.http")
    for secret in ("secret-code-xyz", body["refresh_token"], body["access_token"]):
        assert secret not in http_lines


# -- harness serve ------------------------------------------------------------------------------


def _serve_env(database: Database, pepper: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("HARNESS_TARGET", "DATABASE_URL", "HARNESS_AT_REST_PEPPER")}
    env["HARNESS_DATABASE_URL"] = database.url
    if pepper is not None:
        env["HARNESS_AT_REST_PEPPER"] = pepper
    return env


def test_serve_refuses_bad_setup_with_exit_2(database: Database, pepper: str) -> None:
    harness = str(Path(sys.executable).parent / "harness")
    proc = subprocess.run([harness, "serve", "--target", "nope"], env=_serve_env(database, pepper),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown target" in proc.stderr
    proc = subprocess.run([harness, "serve"], env=_serve_env(database, None),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "HARNESS_AT_REST_PEPPER" in proc.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        proc = subprocess.run([harness, "serve", "--port", port], env=_serve_env(database, pepper),
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "cannot listen" in proc.stderr


@pytest.mark.slow
def test_serve_with_two_workers_exchanges_over_the_network(
    database: Database, pepper: str, store_code: StoreCode
) -> None:
    store_code("served-1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    harness = str(Path(sys.executable).parent / "harness")
    proc = subprocess.Popen([harness, "serve", "--port", str(port), "--workers", "2"],
                            env=_serve_env(database, pepper), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"{base}/healthz", timeout=2)
                if health.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "harness serve did not start"
            time.sleep(0.2)
        first = httpx.post(f"{base}/token", content=exchange_form("served-1"),
                           headers={"Content-Type": FORM}, timeout=10)
        second = httpx.post(f"{base}/token", content=exchange_form("served-1"),
                            headers={"Content-Type": FORM}, timeout=10)
        assert first.status_code == 200, first.text
        assert_error(second, "invalid_grant")
    finally:
        interrupt(proc, timeout=20)
    assert "Traceback" not in (proc.stderr.read() if proc.stderr else "")
