"""Endpoint descriptions: a real authorization server, described in TOML, as a target.

A description says how to reach the server over HTTP (RFC 6749): where its
token endpoint is, which clients the harness may use and how they
authenticate (§2.3.1), how to obtain a fresh authorization code from its
authorization endpoint (§4.1.1, with PKCE S256 chosen by the harness, RFC
7636), optionally how to ask whether a token still works (RFC 7662
introspection, or a bearer-protected resource, RFC 6750), optionally
read-only SQL for white-box evidence, and how many requests the server runs
in parallel. Secrets come from the environment (``secret_env``) and are never
printed. ``${NAME}`` and ``${NAME:-default}`` in any string are replaced from
the environment, so a description can follow a server to another port.

Example (``examples/endpoints/harness-serve.toml``)::

    name = "harness serve"
    token_url = "${CLAIMCHECK_SERVER:-http://127.0.0.1:8000}/token"
    concurrency = 4
    introspection_url = "${CLAIMCHECK_SERVER:-http://127.0.0.1:8000}/introspect"

    [codes]
    authorize_url = "${CLAIMCHECK_SERVER:-http://127.0.0.1:8000}/authorize"

    [[clients]]
    id = "claimcheck-a"
    secret_env = "CLAIMCHECK_CLIENT_SECRET"
    auth = "client_secret_basic"
    redirect_uri = "https://client.example/cb"
    scope = "openid profile"
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import SetupError

AUTH_METHODS = ("none", "client_secret_basic", "client_secret_post")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def is_description(spec: str) -> bool:
    """Whether a target spec names an endpoint description (a ``.toml`` file) rather than Python."""
    return spec.endswith(".toml")


def _expand(value: str, where: str) -> str:
    def sub(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        found = os.environ.get(name)
        if found:
            return found
        if default is not None:
            return default
        raise SetupError(f"{where}: ${{{name}}} is not set in the environment")

    return _VAR.sub(sub, value)


@dataclass(frozen=True)
class ClientSpec:
    """A client the harness may act as (RFC 6749 §2): its secret only from the environment."""

    id: str
    auth: str
    redirect_uri: str
    scope: str
    secret: str | None = field(default=None, repr=False)

    @property
    def confidential(self) -> bool:
        return self.auth != "none"


@dataclass(frozen=True)
class LoginSpec:
    """How a test user logs in and consents before ``/authorize`` issues a code.

    Declarative (``url`` + ``fields``, posted as a form with the session's
    cookies), or ``function = "package.module:function"`` called with the
    ``httpx.Client`` that then drives ``/authorize``.
    """

    url: str | None = None
    method: str = "POST"
    fields: dict[str, str] = field(default_factory=dict, repr=False)
    function: str | None = None


@dataclass(frozen=True)
class CodesSpec:
    """How to obtain a fresh code: the authorization endpoint and the login step."""

    authorize_url: str
    login: LoginSpec | None = None
    #: Extra query parameters for ``/authorize`` (e.g. an audience a server requires).
    params: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 10.0


@dataclass(frozen=True)
class EndpointDescription:
    """A real authorization server as a target (see the module docstring)."""

    name: str
    path: Path
    token_url: str
    clients: tuple[ClientSpec, ...]
    codes: CodesSpec
    concurrency: int
    introspection_url: str | None = None
    resource_url: str | None = None
    database_url: str | None = field(default=None, repr=False)
    token_count_sql: str | None = None
    timeout_s: float = 10.0

    def client(self, client_id: str) -> ClientSpec:
        for client in self.clients:
            if client.id == client_id:
                return client
        raise SetupError(f"{self.name}: no client {client_id!r} in {self.path}")


def _str(table: dict[str, Any], key: str, where: str, *, required: bool = True,
         default: str | None = None) -> str | None:
    value = table.get(key, default)
    if value is None:
        if required:
            raise SetupError(f"{where}: `{key}` is required")
        return None
    if not isinstance(value, str) or not value:
        raise SetupError(f"{where}: `{key}` must be a non-empty string")
    return _expand(value, f"{where}.{key}")


def _secret(table: dict[str, Any], where: str) -> str | None:
    if "secret_env" in table:
        name = table["secret_env"]
        if not isinstance(name, str) or not name:
            raise SetupError(f"{where}: `secret_env` must name an environment variable")
        value = os.environ.get(name)
        if not value:
            raise SetupError(f"{where}: the environment variable {name} (secret_env) is not set")
        return value
    secret = table.get("secret")
    if secret is not None and (not isinstance(secret, str) or not secret):
        raise SetupError(f"{where}: `secret` must be a non-empty string (prefer secret_env)")
    return _expand(secret, f"{where}.secret") if secret else None


def _url(value: str | None, where: str) -> str | None:
    if value is not None and not re.match(r"^https?://[^/\s]+", value):
        raise SetupError(f"{where}: {value!r} is not an http(s) URL")
    return value


def load_description(path: str | Path) -> EndpointDescription:
    """Read and check a description; every mistake is one ``SetupError`` naming the key."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SetupError(f"no endpoint description at {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SetupError(f"cannot read {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SetupError(f"{path} is not valid TOML: {exc}") from None
    where = str(path)
    token_url = _url(_str(raw, "token_url", where), f"{where}: token_url")
    assert token_url is not None
    clients_raw = raw.get("clients")
    if not isinstance(clients_raw, list) or len(clients_raw) < 2:
        raise SetupError(f"{where}: at least two [[clients]] are needed (cross-client checks)")
    clients = []
    for i, entry in enumerate(clients_raw):
        at = f"{where}: clients[{i}]"
        if not isinstance(entry, dict):
            raise SetupError(f"{at} must be a table")
        auth = _str(entry, "auth", at, default="client_secret_basic")
        if auth not in AUTH_METHODS:
            raise SetupError(f"{at}: auth must be one of {', '.join(AUTH_METHODS)}")
        secret = _secret(entry, at)
        if auth != "none" and secret is None:
            raise SetupError(f"{at}: a {auth} client needs secret_env (or secret)")
        clients.append(ClientSpec(id=_str(entry, "id", at) or "", auth=auth or "",
                                  redirect_uri=_str(entry, "redirect_uri", at) or "",
                                  scope=_str(entry, "scope", at, default="openid") or "openid",
                                  secret=secret))
    if len({c.id for c in clients}) != len(clients):
        raise SetupError(f"{where}: client ids must differ")
    codes_raw = raw.get("codes")
    if not isinstance(codes_raw, dict):
        raise SetupError(f"{where}: a [codes] table with authorize_url is required")
    login: LoginSpec | None = None
    login_raw = codes_raw.get("login")
    if isinstance(login_raw, str):
        login = LoginSpec(function=login_raw)
    elif isinstance(login_raw, dict):
        fields = login_raw.get("fields", {})
        if not isinstance(fields, dict):
            raise SetupError(f"{where}: codes.login.fields must be a table")
        expanded: dict[str, str] = {}
        for key, value in fields.items():
            expanded[str(key)] = _expand(str(value), f"{where}: codes.login.fields.{key}")
        login = LoginSpec(url=_url(_str(login_raw, "url", f"{where}: codes.login"),
                                   f"{where}: codes.login.url"),
                          method=(_str(login_raw, "method", f"{where}: codes.login", default="POST")
                                  or "POST").upper(),
                          fields=expanded)
    elif login_raw is not None:
        raise SetupError(f"{where}: codes.login is a table (url, fields) or 'package.module:function'")
    params = codes_raw.get("params", {})
    if not isinstance(params, dict):
        raise SetupError(f"{where}: codes.params must be a table")
    codes = CodesSpec(authorize_url=_url(_str(codes_raw, "authorize_url", f"{where}: codes"),
                                         f"{where}: codes.authorize_url") or "",
                      login=login, params={str(k): str(v) for k, v in params.items()},
                      timeout_s=float(codes_raw.get("timeout_s", 10.0)))
    concurrency = raw.get("concurrency")
    if isinstance(concurrency, str):  # "${WORKERS}": a number from the environment
        expanded_concurrency = _expand(concurrency, f"{where}: concurrency")
        concurrency = int(expanded_concurrency) if expanded_concurrency.isdigit() else None
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise SetupError(f"{where}: `concurrency` (how many requests the server runs in parallel: "
                         "processes × threads) must be a whole number ≥ 1")
    database_url = None
    if "database_url_env" in raw:
        name = raw["database_url_env"]
        database_url = os.environ.get(str(name)) or None
        if database_url is None:
            raise SetupError(f"{where}: the environment variable {name} (database_url_env) is not set")
    sql = raw.get("token_count_sql")
    if sql is not None and (not isinstance(sql, str) or not sql.lstrip().lower().startswith("select")):
        raise SetupError(f"{where}: token_count_sql must be one read-only SELECT")
    return EndpointDescription(
        name=str(raw.get("name") or path.stem), path=path, token_url=token_url, clients=tuple(clients),
        codes=codes, concurrency=concurrency,
        introspection_url=_url(_str(raw, "introspection_url", where, required=False),
                               f"{where}: introspection_url"),
        resource_url=_url(_str(raw, "resource_url", where, required=False), f"{where}: resource_url"),
        database_url=database_url, token_count_sql=sql,
        timeout_s=float(raw.get("timeout_s", 10.0)))
