"""A real authorization server reached over HTTP, seen as a target by the checks and the race.

It speaks only the protocol: it obtains codes from the authorization
endpoint (RFC 6749 §4.1.1, PKCE per RFC 7636 chosen by the harness, ``state``
checked, redirects followed up to the client's ``redirect_uri``), redeems
and refreshes them at the token endpoint (§4.1.3, §6) with the client
authentication the description names (§2.3.1), and asks whether an access
token still works (RFC 7662 introspection, or a bearer-protected resource,
RFC 6750). Refusals come back as the wire's error (``harness.errors.from_wire``);
a 5xx or a lost connection is indeterminate.
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import secrets
import threading
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urljoin, urlsplit

import httpx

from harness.errors import INVALID_CODE, IndeterminateError, SetupError, ValidationError, from_wire
from harness.sut.tokens import Tokens
from harness.targets.capabilities import Capability
from harness.targets.endpoint import ClientSpec, EndpointDescription, load_description

MAX_REDIRECTS = 10


def basic_credentials(client: ClientSpec) -> str:
    """``Authorization: Basic …`` of RFC 6749 §2.3.1: id and secret form-urlencoded, then base64."""
    raw = f"{quote(client.id, safe='')}:{quote(client.secret or '', safe='')}"
    return "Basic " + base64.b64encode(raw.encode()).decode("ascii")


def token_request(client: ClientSpec, form: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(form, headers) of a token request authenticated as ``client`` (RFC 6749 §2.3.1, §3.2)."""
    body = dict(form)
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
    if client.auth == "client_secret_basic":
        headers["Authorization"] = basic_credentials(client)
    elif client.auth == "client_secret_post":
        body.update(client_id=client.id, client_secret=client.secret or "")
    else:
        body["client_id"] = client.id
    return body, headers


def tokens_from(response: httpx.Response) -> Tokens:
    """The RFC 6749 §5.1 body as ``Tokens``, or the error it stands for (raised)."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if response.status_code != 200:
        raise from_wire(response.status_code, body)
    if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
        raise IndeterminateError("Unreadable response", detail="HTTP 200 without an access_token")
    return Tokens(access_token=body["access_token"], refresh_token=str(body.get("refresh_token") or ""),
                  token_type=str(body.get("token_type") or "Bearer"),
                  expires_in=int(body.get("expires_in") or 0), scope=str(body.get("scope") or ""),
                  user_id="", family_id="")


class HttpTarget:
    """An endpoint description as a target: codes from ``/authorize``, grants at ``/token``."""

    def __init__(self, description: EndpointDescription) -> None:
        self.description = description
        self.name = description.name
        self._local = threading.local()
        self._authorize_lock = threading.Lock()
        self._browser: httpx.Client | None = None
        caps = set()
        if description.introspection_url or description.resource_url:
            caps.add(Capability.INTROSPECT)
        self.capabilities = frozenset(caps)

    # -- transport -------------------------------------------------------------------

    def _http(self) -> httpx.Client:
        """One keep-alive client per thread (a racer keeps its connection between codes)."""
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = httpx.Client(timeout=self.description.timeout_s, follow_redirects=False)
            self._local.client = client
        return client

    def _post(self, url: str, form: dict[str, str], headers: dict[str, str]) -> httpx.Response:
        try:
            return self._http().post(url, content=urlencode(form), headers=headers)
        except httpx.HTTPError as exc:
            raise IndeterminateError("Request failed", detail=f"transport: {type(exc).__name__}") from None

    def warm_up(self) -> None:
        """Open the keep-alive connection now (before a race's barrier): a harmless empty POST."""
        with contextlib.suppress(httpx.HTTPError):
            self._http().post(self.description.token_url, content=b"",
                              headers={"Content-Type": "application/x-www-form-urlencoded"})

    def close(self) -> None:
        client = getattr(self._local, "client", None)
        if client is not None:
            client.close()
        if self._browser is not None:
            self._browser.close()

    # -- codes (RFC 6749 §4.1.1, RFC 7636 §4.3) ----------------------------------------------

    def _login(self, browser: httpx.Client) -> None:
        login = self.description.codes.login
        if login is None:
            return
        if login.function is not None:
            module_name, _, attr = login.function.partition(":")
            try:
                fn = getattr(importlib.import_module(module_name), attr)
            except (ImportError, AttributeError, ValueError) as exc:
                raise SetupError(f"{self.name}: codes.login {login.function!r}: {exc}") from None
            fn(browser)
            return
        assert login.url is not None
        response = browser.request(login.method, login.url, data=login.fields)
        if response.status_code >= 400:
            raise SetupError(f"{self.name}: the login step ({login.method} {login.url}) answered "
                             f"HTTP {response.status_code}")

    def _session(self) -> httpx.Client:
        if self._browser is None:
            self._browser = httpx.Client(timeout=self.description.codes.timeout_s, follow_redirects=False)
            self._login(self._browser)
        return self._browser

    def mint_code(self, client_id: str, *, challenge: str | None = None, method: str | None = None,
                  redirect_uri: str | None = None, scope: str | None = None) -> str:
        """A fresh code for ``client_id`` from the authorization endpoint (the harness picks the PKCE pair).

        A refused authorization request (an ``error`` in the redirect, RFC 6749 §4.1.2.1, or a
        4xx page) raises ``ValidationError``: the server refused to issue.
        """
        client = self.description.client(client_id)
        target = redirect_uri or client.redirect_uri
        state = secrets.token_urlsafe(16)
        params = {"response_type": "code", "client_id": client.id, "redirect_uri": target,
                  "scope": scope or client.scope, "state": state, **self.description.codes.params}
        if challenge is not None:
            params["code_challenge"] = challenge
            if method is not None:
                params["code_challenge_method"] = method
        url = f"{self.description.codes.authorize_url}?{urlencode(params)}"
        with self._authorize_lock:  # one browser session, one cookie jar
            browser = self._session()
            relogged = False
            for _ in range(MAX_REDIRECTS):
                try:
                    response = browser.get(url)
                except httpx.HTTPError as exc:
                    raise SetupError(f"{self.name}: the authorization endpoint cannot be reached: "
                                     f"{type(exc).__name__}") from None
                location = response.headers.get("location")
                if response.is_redirect and location:
                    url = urljoin(url, location)
                    if url.startswith(target):
                        return self._code_from(url, state)
                    login = self.description.codes.login
                    if login is not None and login.url and url.startswith(login.url) and not relogged:
                        self._login(browser)  # the session expired: log in again, then retry
                        relogged = True
                        url = f"{self.description.codes.authorize_url}?{urlencode(params)}"
                    continue
                if 400 <= response.status_code < 500:
                    raise ValidationError(INVALID_CODE, detail=f"authorization request refused "
                                                               f"(HTTP {response.status_code})")
                raise SetupError(f"{self.name}: the authorization endpoint answered HTTP "
                                 f"{response.status_code} without redirecting to {target}")
        raise SetupError(f"{self.name}: more than {MAX_REDIRECTS} redirects from the authorization endpoint")

    def _code_from(self, url: str, state: str) -> str:
        query = parse_qs(urlsplit(url).query)
        if "error" in query:
            raise ValidationError(INVALID_CODE, detail=f"authorization request refused: "
                                                       f"{query['error'][0]}")
        if query.get("state", [None])[0] != state:
            raise SetupError(f"{self.name}: the authorization response's state does not match the "
                             "request's (RFC 6749 §4.1.2): refusing its code")
        code = query.get("code", [None])[0]
        if not code:
            raise SetupError(f"{self.name}: the authorization response carries no code")
        return code

    # -- grants (RFC 6749 §4.1.3, §6) ----------------------------------------------------------

    def exchange_code(self, code: str, client_id: str, redirect_uri: str | None = None,
                      code_verifier: str | None = None) -> Tokens:
        client = self.description.client(client_id)
        form = {"grant_type": "authorization_code", "code": code}
        if redirect_uri is not None:
            form["redirect_uri"] = redirect_uri
        if code_verifier is not None:
            form["code_verifier"] = code_verifier
        body, headers = token_request(client, form)
        return tokens_from(self._post(self.description.token_url, body, headers))

    def refresh(self, refresh_token: str, client_id: str) -> Tokens:
        client = self.description.client(client_id)
        body, headers = token_request(client, {"grant_type": "refresh_token",
                                               "refresh_token": refresh_token})
        return tokens_from(self._post(self.description.token_url, body, headers))

    # -- is a token still good? (RFC 7662, RFC 6750) ----------------------------------------

    def introspect_access_token(self, access_token: str) -> dict[str, Any] | None:
        """The token's claims if the server says it is active, else ``None``."""
        d = self.description
        if d.introspection_url:
            client = next((c for c in d.clients if c.confidential), d.clients[0])
            body, headers = token_request(client, {"token": access_token,
                                                   "token_type_hint": "access_token"})
            response = self._post(d.introspection_url, body, headers)
            if response.status_code >= 500:
                raise IndeterminateError("Introspection failed", detail=f"HTTP {response.status_code}")
            try:
                claims: Any = response.json()
            except ValueError:
                claims = None
            if response.status_code != 200 or not isinstance(claims, dict):
                raise SetupError(f"{self.name}: introspection answered HTTP {response.status_code}")
            return claims if claims.get("active") is True else None
        if d.resource_url:
            try:
                response = self._http().get(d.resource_url,
                                            headers={"Authorization": f"Bearer {access_token}"})
            except httpx.HTTPError as exc:
                raise IndeterminateError("Probe failed", detail=type(exc).__name__) from None
            if response.status_code >= 500:
                raise IndeterminateError("Probe failed", detail=f"HTTP {response.status_code}")
            return {"active": True} if response.status_code == 200 else None
        raise SetupError(f"{self.name}: no introspection_url or resource_url in {d.path}")


def load_http_target(path: str) -> HttpTarget:
    """The target of an endpoint description file."""
    return HttpTarget(load_description(path))
