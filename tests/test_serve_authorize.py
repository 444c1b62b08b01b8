"""``harness serve`` as a complete test authorization server: its clients, /authorize, /introspect.

RFC 6749 §4.1.1–§4.1.2.1 (the authorization endpoint), RFC 7636 §4.3 (PKCE
parameters passed to the target untouched), RFC 7662 (introspection). What
these tests pin down:

* the test clients and user of ``examples/endpoints/harness-serve.toml`` are
  registered where absent, once (in the parent, also with ``--workers``), and
  exactly the rows the server created are removed at shutdown (Ctrl-C and
  SIGTERM); a foreign row is never overwritten (exit 2) nor touched;
* an unknown client or a redirect URI that is not registered, character for
  character, is a 400 page and never a redirect; later errors go to the
  verified redirect URI with the ``state``;
* the target, not the server, decides PKCE policy: what ``mint_code`` gets
  over HTTP equals what the target does in process (``plain`` is refused by
  ``hardened`` and stored by ``faithful`` and ``naive``);
* the black-box flow of ``harness.targets.http.HttpTarget`` over the shipped
  description: mint (PKCE S256), exchange, refresh, introspect.

In-process tests run the ASGI app with Starlette's test client; the flow
tests start a real ``harness serve --port 0`` on the session's database.
"""

from __future__ import annotations

import logging
import re
import signal
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from conftest import REDIRECT, Served, StoreCode, dump_all, harness_env, harness_serve

with warnings.catch_warnings():
    # Starlette 1.x nudges towards httpx2 for its test client; httpx (a dev dependency) still works.
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from harness import rfc7636
from harness.at_rest import hash_at_rest
from harness.database import Database
from harness.errors import OAuthError, SetupError, ValidationError
from harness.repository import AuthCodeParams, OAuthRepository
from harness.sut.token_server import (
    CLIENT_SECRET_ENV,
    SERVED_CLIENTS,
    TEST_REDIRECT_URI,
    TEST_USER,
    Registration,
    client_secret_digest,
    create_app,
    register_test_clients,
)
from harness.targets import load_target
from harness.targets.endpoint import ClientSpec, load_description
from harness.targets.http import HttpTarget, basic_credentials
from harness.testing.plugin import CLIENT, TEST_PEPPER, USER

HARNESS = str(Path(sys.executable).with_name("harness"))
DESCRIPTION = Path(__file__).resolve().parents[1] / "examples" / "endpoints" / "harness-serve.toml"
SECRET = "claimcheck-test-client-secret-5d1e"
OWN_CLIENTS = ("claimcheck-a", "claimcheck-b", "claimcheck-public")
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
SCOPE = "openid profile"
#: How long a server may take to say it listens and answer /healthz.
READY_TIMEOUT_S = 60.0
MakeTarget = Callable[..., OAuthRepository]


# -- helpers -------------------------------------------------------------------------------------


def own_rows(db: Database) -> dict[str, int]:
    """Rows of the three test clients and the test user, by table."""
    with db.connect() as conn:
        def count(sql: str, param: object) -> int:
            row = conn.execute(sql.encode(), (param,)).fetchone()
            return int(row[0]) if row else -1

        clients = list(OWN_CLIENTS)
        return {
            "clients": count("SELECT count(*) FROM oauth_clients WHERE client_id = ANY(%s)", clients),
            "codes": count("SELECT count(*) FROM oauth_auth_codes WHERE client_id = ANY(%s)", clients),
            "refresh_tokens": count("SELECT count(*) FROM oauth_refresh_tokens WHERE client_id = ANY(%s)",
                                    clients),
            "users": count("SELECT count(*) FROM users WHERE id = %s", TEST_USER),
        }


NO_OWN_ROWS = {"clients": 0, "codes": 0, "refresh_tokens": 0, "users": 0}


def foreign_rows(db: Database) -> list[str]:
    """Every row of every table that is not the test clients' or the test user's."""
    return [line for line in dump_all(db).splitlines() if "claimcheck-" not in line]


def count_codes(db: Database) -> int:
    with db.connect() as conn:
        row = conn.execute("SELECT count(*) FROM oauth_auth_codes").fetchone()
    return int(row[0]) if row else -1


def location_params(resp: httpx.Response) -> dict[str, str]:
    """The query parameters of a redirect's Location, each sent once."""
    query = parse_qs(urlsplit(resp.headers["location"]).query, keep_blank_values=True)
    assert all(len(v) == 1 for v in query.values()), query
    return {k: v[0] for k, v in query.items()}


def authorize_query(**overrides: str | None) -> dict[str, str]:
    params: dict[str, str | None] = {"response_type": "code", "client_id": "claimcheck-a",
                                     "redirect_uri": TEST_REDIRECT_URI, "scope": SCOPE, "state": "st-1"}
    params.update(overrides)
    return {k: v for k, v in params.items() if v is not None}


def assert_page(resp: httpx.Response, status: int = 400) -> dict[str, Any]:
    """An error shown to the user: no redirect (RFC 6749 §4.1.2.1), never cached, no trace."""
    assert resp.status_code == status, resp.text
    assert "location" not in resp.headers
    assert resp.headers["cache-control"] == "no-store"
    assert "Traceback" not in resp.text
    body: dict[str, Any] = resp.json()
    assert isinstance(body["error"], str) and isinstance(body["error_description"], str)
    return body


# -- in process: registration ------------------------------------------------------------------


@pytest.fixture
def registered(db: Database, faithful: OAuthRepository) -> Iterator[Registration]:
    """The test clients (secret ``SECRET``) and user, registered as ``harness serve`` does; removed after."""
    registration = register_test_clients(db, faithful, SECRET)
    yield registration
    registration.cleanup()


def test_the_served_clients_are_those_of_the_shipped_description(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CLIENT_SECRET_ENV, SECRET)
    monkeypatch.delenv("CLAIMCHECK_SERVER", raising=False)
    description = load_description(DESCRIPTION)
    served = {c.client_id: c for c in SERVED_CLIENTS}
    assert sorted(served) == sorted(c.id for c in description.clients) == sorted(OWN_CLIENTS)
    for client in description.clients:
        assert served[client.id].confidential == client.confidential
        assert client.redirect_uri in served[client.id].redirect_uris
        assert client.secret == (SECRET if client.confidential else None)
    assert description.codes.authorize_url == "http://127.0.0.1:8000/authorize"
    assert description.introspection_url == "http://127.0.0.1:8000/introspect"
    assert description.token_url == "http://127.0.0.1:8000/token"


def test_registration_creates_what_is_absent_and_removes_only_that(
    db: Database, faithful: OAuthRepository, pepper: str, store_code: StoreCode
) -> None:
    store_code("foreign-code")  # a row of someone else's client (client-a of user-1)
    before = foreign_rows(db)
    first = register_test_clients(db, faithful, SECRET)
    assert first.created_clients == first.clients == OWN_CLIENTS and first.created_user
    with db.connect() as conn:
        rows = {r[0]: (r[1], r[2]) for r in conn.execute(
            "SELECT client_id, client_secret_hash, redirect_uris FROM oauth_clients "
            "WHERE client_id = ANY(%s)", (list(OWN_CLIENTS),))}
    digest = hash_at_rest(SECRET, pepper)
    assert digest == client_secret_digest(faithful, SECRET)
    assert rows == {"claimcheck-a": (digest, [TEST_REDIRECT_URI]),
                    "claimcheck-b": (digest, [TEST_REDIRECT_URI]),
                    "claimcheck-public": (None, [TEST_REDIRECT_URI])}

    # A second server on the same database finds every row there: it owns (and removes) none.
    second = register_test_clients(db, faithful, SECRET)
    assert second.clients == OWN_CLIENTS and second.created_clients == () and not second.created_user
    assert second.cleanup().total == 0
    assert own_rows(db)["clients"] == 3

    # What hangs off the created clients goes with them; the foreign rows stay as they were.
    verifier = rfc7636.new_verifier()
    store_code("own-code", client_id="claimcheck-a", user_id=TEST_USER,
               code_challenge=rfc7636.s256_challenge(verifier), code_challenge_method="S256")
    faithful.exchange_code("own-code", "claimcheck-a", REDIRECT, verifier)
    store_code("own-code-2", client_id="claimcheck-public", user_id=TEST_USER)
    removed = first.cleanup()
    assert (removed.codes, removed.refresh_tokens, removed.clients, removed.users) == (2, 1, 3, 1)
    assert own_rows(db) == NO_OWN_ROWS
    assert foreign_rows(db) == before
    assert first.cleanup() is removed  # idempotent


def test_without_the_secret_only_the_public_client_is_registered(
    db: Database, faithful: OAuthRepository
) -> None:
    registration = register_test_clients(db, faithful, None)
    try:
        assert registration.clients == registration.created_clients == ("claimcheck-public",)
        assert own_rows(db)["clients"] == 1
    finally:
        registration.cleanup()
    assert own_rows(db) == NO_OWN_ROWS


def test_rows_that_were_there_before_are_used_but_never_removed(
    db: Database, faithful: OAuthRepository, pepper: str
) -> None:
    with db.connect() as conn:
        conn.execute("INSERT INTO users (id, name) VALUES (%s, 'theirs')", (TEST_USER,))
        conn.execute("INSERT INTO oauth_clients (client_id, client_secret_hash, redirect_uris) "
                     "VALUES ('claimcheck-b', %s, %s)",
                     (hash_at_rest(SECRET, pepper), [TEST_REDIRECT_URI, "https://other.example/cb"]))
    before = dump_all(db)
    registration = register_test_clients(db, faithful, SECRET)
    assert registration.clients == OWN_CLIENTS
    assert registration.created_clients == ("claimcheck-a", "claimcheck-public")
    assert not registration.created_user
    registration.cleanup()
    assert dump_all(db) == before


def test_a_created_user_goes_with_its_codes_even_on_clients_that_stay(
    db: Database, faithful: OAuthRepository, store_code: StoreCode
) -> None:
    # Every client there already (a server before this one), the user not: only the user is ours.
    register_test_clients(db, faithful, SECRET)
    with db.connect() as conn:
        conn.execute("DELETE FROM users WHERE id = %s", (TEST_USER,))
    registration = register_test_clients(db, faithful, SECRET)
    assert registration.created_clients == () and registration.created_user
    store_code("issued-to-our-user", client_id="claimcheck-a", user_id=TEST_USER)
    store_code("issued-to-user-1", client_id="claimcheck-a")
    removed = registration.cleanup()
    assert (removed.codes, removed.refresh_tokens, removed.clients, removed.users) == (1, 0, 0, 1)
    assert own_rows(db) == {"clients": 3, "codes": 1, "refresh_tokens": 0, "users": 0}


@pytest.mark.parametrize(
    ("client_id", "secret_hash", "uris", "needle"),
    [
        ("claimcheck-a", "other", [TEST_REDIRECT_URI], "another client_secret_hash"),
        ("claimcheck-b", None, [TEST_REDIRECT_URI], "another client_secret_hash"),
        ("claimcheck-public", "other", [TEST_REDIRECT_URI], "another client_secret_hash"),
        ("claimcheck-a", SECRET, ["https://client.example/other"], "redirect_uris lack"),
        ("claimcheck-public", None, None, "redirect_uris lack"),
    ],
)
def test_a_conflicting_row_is_refused_and_nothing_is_written(
    db: Database, faithful: OAuthRepository, pepper: str, client_id: str, secret_hash: str | None,
    uris: list[str] | None, needle: str,
) -> None:
    stored = hash_at_rest(secret_hash, pepper) if secret_hash is not None else None
    with db.connect() as conn:
        conn.execute("INSERT INTO oauth_clients (client_id, client_secret_hash, redirect_uris) "
                     "VALUES (%s, %s, %s)", (client_id, stored, uris))
    before = dump_all(db)
    with pytest.raises(SetupError) as info:
        register_test_clients(db, faithful, SECRET)
    message = str(info.value)
    assert needle in message and repr(client_id) in message
    assert len(message.splitlines()) == 1
    assert SECRET not in message and hash_at_rest(SECRET, pepper) not in message
    assert stored is None or stored not in message
    assert dump_all(db) == before  # one transaction: not even the user was left behind


def test_a_secret_basic_auth_cannot_carry_is_refused(db: Database, faithful: OAuthRepository) -> None:
    for bad in ("a\x00b", "line\nbreak", "x" * 5000):
        with pytest.raises(SetupError, match=CLIENT_SECRET_ENV) as info:
            register_test_clients(db, faithful, bad)
        assert bad not in str(info.value)
    assert own_rows(db) == NO_OWN_ROWS


# -- in process: GET /authorize --------------------------------------------------------------------


@pytest.fixture
def app(registered: Registration, faithful: OAuthRepository) -> Iterator[TestClient]:
    with TestClient(create_app(faithful), raise_server_exceptions=False) as c:
        yield c


def authorize(client: TestClient, params: dict[str, str] | list[tuple[str, str]],
              **kwargs: Any) -> httpx.Response:
    resp: httpx.Response = client.get("/authorize", params=params, follow_redirects=False, **kwargs)
    return resp


def test_a_code_is_issued_stored_for_the_test_user_and_redirected_with_the_state(
    app: TestClient, db: Database, faithful: OAuthRepository
) -> None:
    challenge = rfc7636.s256_challenge(rfc7636.new_verifier())
    state = "opaque state/é & = +"
    resp = authorize(app, authorize_query(state=state, code_challenge=challenge,
                                          code_challenge_method="S256"))
    assert resp.status_code == 302, resp.text
    assert resp.headers["cache-control"] == "no-store" and resp.headers["pragma"] == "no-cache"
    assert resp.headers["location"].startswith(TEST_REDIRECT_URI + "?")
    params = location_params(resp)
    assert set(params) == {"code", "state"} and params["state"] == state
    code = params["code"]
    assert len(code) >= 43  # 256 bits, base64url (RFC 6749 §10.10)
    with db.connect() as conn:
        row = conn.execute(
            "SELECT client_id, user_id, redirect_uri, scope, code_challenge, code_challenge_method "
            "FROM oauth_auth_codes WHERE code = %s", (faithful.hash(code),)).fetchone()
    assert row == ("claimcheck-a", TEST_USER, TEST_REDIRECT_URI, SCOPE, challenge, "S256")
    # no state sent, none returned; every request gets a fresh code
    again = authorize(app, authorize_query(state=None))
    assert set(location_params(again)) == {"code"} and location_params(again)["code"] != code


@pytest.mark.parametrize(
    ("case", "overrides"),
    [
        ("unknown client", {"client_id": "nobody"}),
        ("a client of the database that is not a test client", {"client_id": CLIENT}),
        ("missing client_id", {"client_id": None}),
        ("missing redirect_uri", {"redirect_uri": None}),
        ("another host", {"redirect_uri": "https://evil.example/cb"}),
        ("a longer path", {"redirect_uri": TEST_REDIRECT_URI + "/evil"}),
        ("a prefix", {"redirect_uri": "https://client.example/c"}),
        ("dot segments", {"redirect_uri": "https://client.example/cb/../cb"}),
        ("an added query", {"redirect_uri": TEST_REDIRECT_URI + "?next=https://evil.example"}),
        ("a fragment", {"redirect_uri": TEST_REDIRECT_URI + "#frag"}),
        ("another case", {"redirect_uri": "https://CLIENT.example/cb"}),
        ("a trailing slash", {"redirect_uri": TEST_REDIRECT_URI + "/"}),
        ("http instead of https", {"redirect_uri": "http://client.example/cb"}),
        ("an explicit port", {"redirect_uri": "https://client.example:443/cb"}),
        # even with the rest wrong too: the redirect URI is judged first, and nothing is redirected
        ("bad response_type and bad redirect_uri", {"response_type": "token",
                                                   "redirect_uri": "https://evil.example/cb"}),
    ],
)
def test_an_unverified_client_or_redirect_uri_is_a_page_never_a_redirect(
    app: TestClient, db: Database, case: str, overrides: dict[str, str | None]
) -> None:
    codes = count_codes(db)
    body = assert_page(authorize(app, authorize_query(**overrides)))
    assert body["error"] in ("invalid_client", "invalid_request"), case
    assert count_codes(db) == codes, case  # nothing issued


@pytest.mark.parametrize("name", ["client_id", "redirect_uri"])
def test_a_repeated_client_id_or_redirect_uri_is_a_page(app: TestClient, name: str) -> None:
    params = [*authorize_query().items(), (name, authorize_query()[name])]
    assert_page(authorize(app, params))


def test_the_error_page_for_a_browser_is_html_and_echoes_nothing(app: TestClient) -> None:
    evil = "<script>alert(1)</script>"
    resp = authorize(app, authorize_query(client_id=evil), headers={"Accept": "text/html"})
    assert resp.status_code == 400 and "location" not in resp.headers
    assert resp.headers["content-type"].startswith("text/html")
    assert "<script>" not in resp.text and "invalid_client" in resp.text


@pytest.mark.parametrize(
    ("case", "query", "error"),
    [
        ("implicit grant", authorize_query(response_type="token"), "unsupported_response_type"),
        ("missing response_type", authorize_query(response_type=None), "invalid_request"),
        ("missing scope", authorize_query(scope=None), "invalid_scope"),
        ("malformed scope", authorize_query(scope='openid "quoted"'), "invalid_scope"),
        ("repeated scope", [*authorize_query().items(), ("scope", "openid")], "invalid_request"),
        ("repeated code_challenge", [*authorize_query(code_challenge="x" * 43).items(),
                                     ("code_challenge", "y" * 43)], "invalid_request"),
    ],
)
def test_later_errors_go_to_the_verified_redirect_uri_with_the_state(
    app: TestClient, db: Database, case: str, query: Any, error: str
) -> None:
    codes = count_codes(db)
    resp = authorize(app, query)
    assert resp.status_code == 302, case
    assert resp.headers["location"].startswith(TEST_REDIRECT_URI + "?")
    params = location_params(resp)
    assert params["error"] == error and params["state"] == "st-1", case
    assert "code" not in params and isinstance(params["error_description"], str)
    assert count_codes(db) == codes, case


def test_unknown_parameters_are_ignored(app: TestClient) -> None:
    resp = authorize(app, [*authorize_query().items(), ("prompt", "none"), ("prompt", "login")])
    assert resp.status_code == 302 and "code" in location_params(resp)


def test_a_registered_redirect_uri_keeps_its_query(
    db: Database, faithful: OAuthRepository, registered: Registration
) -> None:
    uri = "https://client.example/cb?tenant=7"
    with db.connect() as conn:
        conn.execute("UPDATE oauth_clients SET redirect_uris = %s WHERE client_id = %s", ([uri], CLIENT))
    with TestClient(create_app(faithful, clients={CLIENT}, user_id=USER),
                    raise_server_exceptions=False) as c:
        resp = authorize(c, authorize_query(client_id=CLIENT, redirect_uri=uri))
        assert resp.status_code == 302, resp.text
        assert resp.headers["location"].startswith(uri + "&code=")
        assert location_params(resp)["tenant"] == "7"
        # the test clients are not served by an app told to serve client-a only
        assert_page(authorize(c, authorize_query()))


@pytest.mark.parametrize("target_name", ["faithful", "hardened", "naive"])
@pytest.mark.parametrize(
    ("case", "challenge", "method"),
    [
        ("S256", rfc7636.s256_challenge(rfc7636.new_verifier()), "S256"),
        ("plain", rfc7636.new_verifier(), "plain"),
        ("challenge without a method", rfc7636.new_verifier(), None),
        ("malformed S256 challenge", "abc", "S256"),
        ("a method without a challenge", None, "S256"),
        ("an unknown method", rfc7636.new_verifier(), "S512"),
        ("no PKCE", None, None),
    ],
)
def test_the_target_decides_pkce_policy_and_http_agrees_with_in_process(
    db: Database, make_target: MakeTarget, target_name: str, case: str, challenge: str | None,
    method: str | None,
) -> None:
    target = make_target(target_name)
    registration = register_test_clients(db, target, SECRET)
    try:
        try:
            target.store_authorization_code(AuthCodeParams(
                code=f"in-process-{case}", client_id="claimcheck-a", user_id=TEST_USER,
                redirect_uri=TEST_REDIRECT_URI, scope=SCOPE, code_challenge=challenge,
                code_challenge_method=method))
            in_process = "stored"
        except OAuthError:
            in_process = "refused"
        with TestClient(create_app(target), raise_server_exceptions=False) as c:
            resp = authorize(c, authorize_query(code_challenge=challenge, code_challenge_method=method))
        assert resp.status_code == 302, resp.text
        params = location_params(resp)
        over_http = "stored" if "code" in params else "refused"
        assert over_http == in_process, (target_name, case, params)
        assert params["state"] == "st-1"
        if over_http == "refused":
            # a refusal the target made is invalid_request, an unexpected one (the schema's CHECK on
            # the method) server_error: both refused, as in process
            assert params["error"] in ("invalid_request", "server_error"), params
    finally:
        registration.cleanup()
    if (case, target_name) == ("plain", "hardened"):
        assert in_process == "refused"
    if case == "plain" and target_name != "hardened":
        assert in_process == "stored"


def test_no_code_reaches_the_log(app: TestClient, caplog: pytest.LogCaptureFixture,
                                 make_target: MakeTarget) -> None:
    with caplog.at_level(logging.DEBUG):
        code = location_params(authorize(app, authorize_query()))["code"]
        with TestClient(create_app(make_target("hardened")), raise_server_exceptions=False) as c:
            authorize(c, authorize_query(code_challenge="x" * 43, code_challenge_method="plain"))
    text = " ".join(r.getMessage() for r in caplog.records)
    assert code not in text


def test_a_database_that_cannot_be_reached_is_a_page(
    registered: Registration, database: Database, pepper: str
) -> None:
    from harness.database import connect

    gone = connect(database.url, migrate=False)
    target = load_target("faithful", gone, pepper=pepper)
    gone.close()
    with TestClient(create_app(target), raise_server_exceptions=False) as c:
        resp = authorize(c, authorize_query())
    body = assert_page(resp, resp.status_code)
    assert resp.status_code >= 500 and body["error"] in ("server_error", "temporarily_unavailable")


# -- in process: POST /introspect ------------------------------------------------------------------


def basic(client_id: str, secret: str) -> dict[str, str]:
    """HTTP Basic client authentication (RFC 6749 §2.3.1), as ``HttpTarget`` sends it."""
    return {"Authorization": basic_credentials(ClientSpec(client_id, "client_secret_basic", TEST_REDIRECT_URI,
                                                          SCOPE, secret))}


def tokens_for(app: TestClient) -> dict[str, Any]:
    verifier = rfc7636.new_verifier()
    code = location_params(authorize(app, authorize_query(
        code_challenge=rfc7636.s256_challenge(verifier), code_challenge_method="S256")))["code"]
    resp = app.post("/token", headers={**FORM, **basic("claimcheck-a", SECRET)}, content=urlencode({
        "grant_type": "authorization_code", "code": code, "redirect_uri": TEST_REDIRECT_URI,
        "code_verifier": verifier}))
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def test_introspection_answers_active_with_the_claims_and_inactive_otherwise(app: TestClient) -> None:
    tokens = tokens_for(app)
    resp = app.post("/introspect", headers={**FORM, **basic("claimcheck-a", SECRET)},
                    content=urlencode({"token": tokens["access_token"], "token_type_hint": "access_token"}))
    assert resp.status_code == 200, resp.text
    assert resp.headers["cache-control"] == "no-store"
    claims = resp.json()
    assert set(claims) == {"active", "scope", "client_id", "sub", "exp", "iat", "token_type"}
    assert claims["active"] is True and claims["token_type"] == "Bearer"
    assert (claims["client_id"], claims["sub"], claims["scope"]) == ("claimcheck-a", TEST_USER, SCOPE)
    assert claims["exp"] > claims["iat"] > 0
    # client_secret_post works as well; a refresh token or garbage is just inactive (§2.2)
    for token in (tokens["refresh_token"], "garbage", tokens["access_token"][:-2] + "xx"):
        resp = app.post("/introspect", headers=FORM, content=urlencode({
            "token": token, "client_id": "claimcheck-b", "client_secret": SECRET}))
        assert resp.status_code == 200 and resp.json() == {"active": False}


@pytest.mark.parametrize(
    ("case", "headers", "form", "status", "error"),
    [
        ("unknown client", basic("nobody", SECRET), {"token": "t"}, 401, "invalid_client"),
        ("wrong secret", basic("claimcheck-a", "wrong"), {"token": "t"}, 401, "invalid_client"),
        ("public client", {}, {"token": "t", "client_id": "claimcheck-public"}, 401, "invalid_client"),
        ("no client", {}, {"token": "t"}, 400, "invalid_request"),
        ("missing token", basic("claimcheck-a", SECRET), {}, 400, "invalid_request"),
        ("repeated token", basic("claimcheck-a", SECRET), [("token", "a"), ("token", "b")], 400,
         "invalid_request"),
        ("not a form", {**basic("claimcheck-a", SECRET), "Content-Type": "application/json"},
         {"token": "t"}, 400, "invalid_request"),
    ],
)
def test_introspection_refuses_what_it_must(
    app: TestClient, case: str, headers: dict[str, str], form: Any, status: int, error: str
) -> None:
    resp = app.post("/introspect", headers={**FORM, **headers}, content=urlencode(form))
    assert resp.status_code == status, (case, resp.text)
    assert resp.json()["error"] == error and resp.headers["cache-control"] == "no-store"
    assert app.get("/introspect").status_code == 405


def test_hardened_introspection_sees_a_revoked_family(
    db: Database, make_target: MakeTarget
) -> None:
    target = make_target("hardened")
    registration = register_test_clients(db, target, SECRET)
    try:
        with TestClient(create_app(target), raise_server_exceptions=False) as c:
            code = location_params(authorize(c, authorize_query()))["code"]
            exchange = urlencode({"grant_type": "authorization_code", "code": code,
                                  "redirect_uri": TEST_REDIRECT_URI})
            auth = {**FORM, **basic("claimcheck-a", SECRET)}
            tokens = c.post("/token", headers=auth, content=exchange).json()
            probe = urlencode({"token": tokens["access_token"]})
            assert c.post("/introspect", headers=auth, content=probe).json()["active"] is True
            assert c.post("/token", headers=auth, content=exchange).status_code == 400  # replay
            assert c.post("/introspect", headers=auth, content=probe).json() == {"active": False}
    finally:
        registration.cleanup()


# -- a real ``harness serve`` ------------------------------------------------------------------------


def serve_env(database: Database, *, secret: str | None = SECRET) -> dict[str, str]:
    env = harness_env(database.url, pepper=TEST_PEPPER)
    for name in (CLIENT_SECRET_ENV, "CLAIMCHECK_SERVER"):
        env.pop(name, None)
    if secret is not None:
        env[CLIENT_SECRET_ENV] = secret
    return env


@pytest.fixture
def black_box(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Served], HttpTarget]]:
    """``black_box(served)``: the shipped description as an ``HttpTarget`` pointed at that server."""
    made: list[HttpTarget] = []

    def make(served: Served) -> HttpTarget:
        monkeypatch.setenv("CLAIMCHECK_SERVER", served.base)
        monkeypatch.setenv(CLIENT_SECRET_ENV, SECRET)
        target = HttpTarget(load_description(DESCRIPTION))
        made.append(target)
        return target

    yield make
    for target in made:
        target.close()


def in_process_verdicts(target: OAuthRepository) -> dict[str, bool]:
    """What the target does in process, on the foreign client-a: is plain stored, is S256 redeemed?"""
    verdicts = {}
    try:
        target.store_authorization_code(AuthCodeParams(
            code="reference-plain", client_id=CLIENT, user_id=USER, redirect_uri=REDIRECT, scope=SCOPE,
            code_challenge=rfc7636.new_verifier(), code_challenge_method="plain"))
        verdicts["plain stored"] = True
    except OAuthError:
        verdicts["plain stored"] = False
    verifier = rfc7636.new_verifier()
    target.store_authorization_code(AuthCodeParams(
        code="reference-s256", client_id=CLIENT, user_id=USER, redirect_uri=REDIRECT, scope=SCOPE,
        code_challenge=rfc7636.s256_challenge(verifier), code_challenge_method="S256"))
    try:
        target.exchange_code("reference-s256", CLIENT, REDIRECT, verifier)
        verdicts["S256 redeemed"] = True
    except OAuthError:
        verdicts["S256 redeemed"] = False
    return verdicts


#: What the shipped targets are known to do (the in-process verdicts must say the same).
KNOWN = {
    "faithful": {"plain stored": True, "S256 redeemed": True},
    "hardened": {"plain stored": False, "S256 redeemed": True},
    # naive: S256 computed with padded standard base64 (RFC 7636 §4.2 broken), so a right verifier fails
    "naive": {"plain stored": True, "S256 redeemed": False},
}


@pytest.mark.parametrize(("target_name", "stop_with"), [("faithful", signal.SIGINT),
                                                        ("hardened", signal.SIGTERM),
                                                        ("naive", signal.SIGINT)])
def test_black_box_flow_over_the_shipped_description(
    target_name: str, stop_with: int, db: Database, make_target: MakeTarget,
    black_box: Callable[[Served], HttpTarget], tmp_path: Path,
) -> None:
    expected = in_process_verdicts(make_target(target_name))
    assert expected == KNOWN[target_name]
    foreign_before = foreign_rows(db)
    with harness_serve("--target", target_name, env=serve_env(db), logs=tmp_path / "logs") as srv:
        http = black_box(srv)
        secrets_seen: list[str] = []

        # PKCE S256: mint (state checked by HttpTarget), exchange, refresh, introspect
        verifier = rfc7636.new_verifier()
        code = http.mint_code("claimcheck-a", challenge=rfc7636.s256_challenge(verifier), method="S256")
        secrets_seen.append(code)
        if expected["S256 redeemed"]:
            tokens = http.exchange_code(code, "claimcheck-a", TEST_REDIRECT_URI, verifier)
        else:
            with pytest.raises(OAuthError) as refused:
                http.exchange_code(code, "claimcheck-a", TEST_REDIRECT_URI, verifier)
            assert refused.value.error == "invalid_grant"
            # the rest of the flow, without PKCE, as the public client
            code = http.mint_code("claimcheck-public")
            secrets_seen.append(code)
            tokens = http.exchange_code(code, "claimcheck-public", TEST_REDIRECT_URI)
        client = "claimcheck-a" if expected["S256 redeemed"] else "claimcheck-public"
        refreshed = http.refresh(tokens.refresh_token, client)
        secrets_seen += [tokens.access_token, tokens.refresh_token, refreshed.access_token,
                         refreshed.refresh_token]
        claims = http.introspect_access_token(refreshed.access_token)
        assert claims is not None and claims["active"] is True
        assert (claims["sub"], claims["client_id"]) == (TEST_USER, client)
        assert http.introspect_access_token("not-a-token") is None
        # client_secret_post (claimcheck-b) redeems too
        code_b = http.mint_code("claimcheck-b")
        assert http.exchange_code(code_b, "claimcheck-b", TEST_REDIRECT_URI).access_token

        # plain: the target decides, and HTTP says what the target says in process
        plain = rfc7636.new_verifier()
        if expected["plain stored"]:
            assert http.mint_code("claimcheck-a", challenge=plain, method="plain")
        else:
            with pytest.raises(ValidationError):
                http.mint_code("claimcheck-a", challenge=plain, method="plain")

        # over the wire: unknown client and unregistered redirect URI are 400 pages, no Location
        with httpx.Client(base_url=srv.base, timeout=10) as raw:
            for query in (authorize_query(client_id="nobody"),
                          authorize_query(redirect_uri="https://evil.example/cb")):
                assert_page(raw.get("/authorize", params=query))
            resp = raw.get("/authorize", params=authorize_query(state="echo-me"))
            assert resp.status_code == 302 and location_params(resp)["state"] == "echo-me"
        assert own_rows(db)["clients"] == 3 and own_rows(db)["codes"] >= 3

        assert srv.stop(stop_with) in (0, 130), srv.output()
    assert own_rows(db) == NO_OWN_ROWS
    assert foreign_rows(db) == foreign_before
    text = srv.output()
    assert "Traceback" not in text and SECRET not in text
    for secret in secrets_seen:
        assert secret not in text
    assert re.search(r"removed the 3 client\(s\), 1 user\(s\), \d+ code\(s\)", text), text


def test_a_foreign_claimcheck_a_with_another_secret_is_exit_2(db: Database, pepper: str) -> None:
    theirs = hash_at_rest("their own secret", pepper)
    with db.connect() as conn:
        conn.execute("INSERT INTO oauth_clients (client_id, client_secret_hash, redirect_uris) "
                     "VALUES ('claimcheck-a', %s, %s)", (theirs, [TEST_REDIRECT_URI]))
    before = dump_all(db)
    proc = subprocess.run([HARNESS, "serve", "--port", "0"], env=serve_env(db), capture_output=True,
                          timeout=60)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("harness: error: "), err
    assert "'claimcheck-a'" in lines[0] and "another client_secret_hash" in lines[0]
    assert SECRET not in err and theirs not in err
    assert dump_all(db) == before  # their row untouched, nothing of ours created


def test_without_the_secret_it_says_so_and_serves_the_public_client(
    db: Database, tmp_path: Path
) -> None:
    with harness_serve(env=serve_env(db, secret=None), logs=tmp_path / "logs") as srv, \
            httpx.Client(base_url=srv.base, timeout=10) as http:
        assert own_rows(db) == {"clients": 1, "codes": 0, "refresh_tokens": 0, "users": 1}
        assert_page(http.get("/authorize", params=authorize_query()))  # claimcheck-a: not registered
        resp = http.get("/authorize", params=authorize_query(client_id="claimcheck-public"))
        code = location_params(resp)["code"]
        tokens = http.post("/token", headers=FORM, content=urlencode({
            "grant_type": "authorization_code", "code": code, "client_id": "claimcheck-public",
            "redirect_uri": TEST_REDIRECT_URI}))
        assert tokens.status_code == 200, tokens.text
        srv.stop()
    assert f"{CLIENT_SECRET_ENV} is not set: only the public test client is registered" in srv.stderr()
    assert own_rows(db) == NO_OWN_ROWS


@pytest.mark.slow
def test_with_workers_the_parent_registers_once_and_cleans_up(
    db: Database, black_box: Callable[[Served], HttpTarget], tmp_path: Path
) -> None:
    with harness_serve("--workers", "2", env=serve_env(db), logs=tmp_path / "logs") as srv:
        http = black_box(srv)
        verifier = rfc7636.new_verifier()
        for _ in range(4):  # enough requests that both workers are likely to answer some
            code = http.mint_code("claimcheck-a", challenge=rfc7636.s256_challenge(verifier), method="S256")
            tokens = http.exchange_code(code, "claimcheck-a", TEST_REDIRECT_URI, verifier)
            assert http.introspect_access_token(tokens.access_token) is not None
        assert srv.stop(signal.SIGTERM) in (0, 130), srv.output()
    text = srv.stderr()
    assert text.count(f"test user {TEST_USER}, clients") == 1, text
    assert text.count("removed the 3 client(s)") == 1, text
    assert own_rows(db) == NO_OWN_ROWS
    assert "Traceback" not in text
