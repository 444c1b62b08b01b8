"""A real OAuth 2.0 authorization server, written with Authlib the way its docs and example show it.

This is the server the harness races in the test suite: nobody here wrote its
OAuth logic. It follows Authlib's documentation ("Register Grants",
"RFC7662") and authlib/example-oauth2-server (``website/oauth2.py``,
``models.py``, ``routes.py``): Flask + Flask-SQLAlchemy, the
``authlib.integrations.sqla_oauth2`` mixins, the authorization-code grant
with ``CodeChallenge(required=True)`` and the refresh-token grant.

``AUTHLIB_CLAIM`` picks how a code is redeemed:

- ``documented`` (default): exactly the documented pattern. The token
  endpoint reads the code row (``query_authorization_code``), saves the new
  token (commit), then deletes the code (``delete_authorization_code``,
  commit). Nothing stops two concurrent requests from both reading the row
  before either deletes it, so one code can yield several token sets: the
  bug the harness must find.
- ``atomic``: the positive control. ``query_authorization_code`` claims the
  code with ``DELETE … RETURNING`` inside the request's transaction, which
  ``save_token``'s commit makes permanent together with the new token; a
  concurrent request blocks on the row lock, then finds nothing. A
  ``SELECT … FOR UPDATE`` would NOT do: Authlib calls ``save_token`` (which
  commits, releasing the lock) before ``delete_authorization_code``, so the
  next request would still see the row. The refresh-token grant claims its
  token the same way (``UPDATE … WHERE refresh_token_revoked_at = 0
  RETURNING``).

Environment: ``AUTHLIB_DATABASE_URL`` (a PostgreSQL URL or libpq conninfo,
converted to SQLAlchemy's ``postgresql+psycopg``), ``AUTHLIB_CLAIM``,
``AUTHLIB_CLIENT_SECRET`` (both confidential clients) and optionally
``AUTHLIB_SECRET_KEY`` (Flask's session key; derived from the client secret
otherwise, so every gunicorn worker reads the others' session cookies).
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any, ClassVar
from urllib.parse import urlencode

from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector, current_token
from authlib.integrations.sqla_oauth2 import (
    OAuth2AuthorizationCodeMixin,
    OAuth2ClientMixin,
    OAuth2TokenMixin,
    create_bearer_token_validator,
    create_query_client_func,
    create_query_token_func,
    create_revocation_endpoint,
    create_save_token_func,
)
from authlib.oauth2.rfc6749 import grants
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from flask import Flask, Response, jsonify, redirect, request, session
from flask_sqlalchemy import SQLAlchemy
from psycopg import conninfo
from sqlalchemy import URL, text
from sqlalchemy.orm import Session

CLAIM_MODES = ("documented", "atomic")
REDIRECT_URI = "https://client.example/cb"
SCOPE = "openid profile"
USERNAME = "alice"
ISSUER = "https://authlib.claimcheck.test/"
# client_id -> token endpoint auth method. Both confidential clients use AUTHLIB_CLIENT_SECRET.
CLIENTS = {
    "claimcheck-a": "client_secret_basic",
    "claimcheck-b": "client_secret_post",
    "claimcheck-public": "none",
}
_SEED_LOCK = "claimcheck-authlib-seed"  # pg_advisory_xact_lock key: workers started together seed once

db = SQLAlchemy()


# --- models: website/models.py of the example, unchanged in substance -------------------------------


class User(db.Model):
    id = db.Column(db.Integer, primary_key=True)
    username = db.Column(db.String(40), unique=True)

    def __str__(self) -> str:
        return str(self.username)

    def get_user_id(self) -> int:
        return int(self.id)


class OAuth2Client(db.Model, OAuth2ClientMixin):
    __tablename__ = "oauth2_client"

    id = db.Column(db.Integer, primary_key=True)
    user_id = db.Column(db.Integer, db.ForeignKey("user.id", ondelete="CASCADE"))
    user = db.relationship("User")


class OAuth2AuthorizationCode(db.Model, OAuth2AuthorizationCodeMixin):
    __tablename__ = "oauth2_code"

    id = db.Column(db.Integer, primary_key=True)
    user_id = db.Column(db.Integer, db.ForeignKey("user.id", ondelete="CASCADE"))
    user = db.relationship("User")


class OAuth2Token(db.Model, OAuth2TokenMixin):
    __tablename__ = "oauth2_token"

    id = db.Column(db.Integer, primary_key=True)
    user_id = db.Column(db.Integer, db.ForeignKey("user.id", ondelete="CASCADE"))
    user = db.relationship("User")

    def is_refresh_token_active(self) -> bool:
        # The example tests a ``revoked`` attribute the current mixin no longer has; the mixin's
        # own column is refresh_token_revoked_at. Lifetime as in the example: twice the access token's.
        if self.refresh_token_revoked_at:
            return False
        return bool(self.issued_at + self.expires_in * 2 >= time.time())


# --- grants: website/oauth2.py of the example -------------------------------------------------------


class AuthorizationCodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = ["client_secret_basic", "client_secret_post", "none"]
    CLAIM = "documented"  # set per app by create_app (a subclass per app, see _grant_classes)

    def save_authorization_code(self, code: str, request: Any) -> OAuth2AuthorizationCode:
        code_challenge = request.payload.data.get("code_challenge")
        code_challenge_method = request.payload.data.get("code_challenge_method")
        auth_code = OAuth2AuthorizationCode(
            code=code,
            client_id=request.client.client_id,
            redirect_uri=request.payload.redirect_uri,
            scope=request.scope,
            user_id=request.user.id,
            code_challenge=code_challenge,
            code_challenge_method=code_challenge_method,
        )
        db.session.add(auth_code)
        db.session.commit()
        return auth_code

    def query_authorization_code(self, code: str, client: Any) -> OAuth2AuthorizationCode | None:
        if self.CLAIM == "atomic":
            return _claim_code(code, client.client_id)
        # The documented pattern: a plain read. Two concurrent requests both get the row.
        auth_code = OAuth2AuthorizationCode.query.filter_by(code=code, client_id=client.client_id).first()
        if auth_code and not auth_code.is_expired():
            return auth_code
        return None

    def delete_authorization_code(self, authorization_code: OAuth2AuthorizationCode) -> None:
        if self.CLAIM == "atomic":
            # Already deleted by the claim, and committed with the token by save_token.
            db.session.commit()
            return
        db.session.delete(authorization_code)
        db.session.commit()

    def authenticate_user(self, authorization_code: OAuth2AuthorizationCode) -> User | None:
        return db.session.get(User, authorization_code.user_id)


class RefreshTokenGrant(grants.RefreshTokenGrant):
    # The docs: "You can add more in the subclass"; the default is client_secret_basic only,
    # which would leave claimcheck-b and the public client unable to refresh.
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = ["client_secret_basic", "client_secret_post", "none"]
    # Rotation (the docs' switch): each refresh returns a new refresh token and revokes the old.
    INCLUDE_NEW_REFRESH_TOKEN = True
    CLAIM = "documented"

    def authenticate_refresh_token(self, refresh_token: str) -> OAuth2Token | None:
        if self.CLAIM == "atomic":
            return _claim_refresh_token(refresh_token)
        token = OAuth2Token.query.filter_by(refresh_token=refresh_token).first()
        if token and token.is_refresh_token_active():
            return token
        return None

    def authenticate_user(self, credential: OAuth2Token) -> User | None:
        return db.session.get(User, credential.user_id)

    def revoke_old_credential(self, credential: OAuth2Token) -> None:
        # The docs set ``credential.revoked = True``, an attribute the sqla mixin has no column for
        # (it would silently revoke nothing); the mixin's column is refresh_token_revoked_at.
        credential.refresh_token_revoked_at = int(time.time())
        db.session.add(credential)
        db.session.commit()


def _claim_code(code: str, client_id: str) -> OAuth2AuthorizationCode | None:
    """Delete the code row and return what it held, in the request's open transaction.

    A concurrent DELETE of the same row waits for this transaction; once it
    commits (save_token) that DELETE matches nothing, so the code is won once.
    If this request fails later (a wrong code_verifier), Flask-SQLAlchemy
    rolls the transaction back at teardown and the code is still there.
    """
    table = OAuth2AuthorizationCode.__table__
    row = db.session.execute(
        table.delete()
        .where(table.c.code == code, table.c.client_id == client_id)
        .returning(*table.c)
    ).mappings().first()
    if row is None:
        return None
    item = OAuth2AuthorizationCode(**dict(row))  # transient: never added to the session
    return None if item.is_expired() else item


def _claim_refresh_token(refresh_token: str) -> OAuth2Token | None:
    """Mark the refresh token spent in the request's transaction; only one request can."""
    table = OAuth2Token.__table__
    token_id = db.session.execute(
        table.update()
        .where(table.c.refresh_token == refresh_token, table.c.refresh_token_revoked_at == 0)
        .values(refresh_token_revoked_at=int(time.time()))
        .returning(table.c.id)
    ).scalar()
    if token_id is None:
        return None
    token = db.session.get(OAuth2Token, token_id)
    if token is None or token.issued_at + token.expires_in * 2 < time.time():
        return None  # expired: the request fails and its transaction is rolled back
    return token


class TokenIntrospectionEndpoint(IntrospectionEndpoint):
    """RFC 7662, the three methods the docs say to implement."""

    CLIENT_AUTH_METHODS: ClassVar[list[str]] = ["client_secret_basic", "client_secret_post"]

    def query_token(self, token: str, token_type_hint: str | None) -> OAuth2Token | None:
        return _query_token(token, token_type_hint)

    def introspect_token(self, token: OAuth2Token) -> dict[str, Any]:
        user = db.session.get(User, token.user_id)
        return {
            "active": True,
            "client_id": token.client_id,
            "token_type": token.token_type,
            "username": user.username if user else None,
            "scope": token.get_scope(),
            "sub": str(token.user_id),
            "aud": token.client_id,
            "iss": ISSUER,
            "exp": token.issued_at + token.expires_in,
            "iat": token.issued_at,
        }

    def check_permission(self, token: OAuth2Token, client: OAuth2Client, request: Any) -> bool:
        # The docs' example admits "internal" clients; here: any confidential client (one that
        # authenticated with a secret) plays the resource server and may introspect any token.
        return bool(client.token_endpoint_auth_method != "none")


# Authlib's own query for revocation and introspection: by access token, else by refresh token.
_query_token = create_query_token_func(db.session, OAuth2Token)


# --- the app ----------------------------------------------------------------------------------------


def sqlalchemy_url(url: str) -> URL:
    """``postgresql://…`` or ``key=value`` conninfo → a ``postgresql+psycopg`` SQLAlchemy URL.

    Host and port go to the query string, where the psycopg dialect passes them
    to libpq as they are: the embedded server's URL names a socket directory
    (``?host=/path``), which the URL's host part cannot hold.
    """
    params = {k: v for k, v in conninfo.conninfo_to_dict(url).items() if v is not None}
    user = params.pop("user", None)
    password = params.pop("password", None)
    dbname = params.pop("dbname", None)
    return URL.create(
        "postgresql+psycopg",
        username=str(user) if user is not None else None,
        password=str(password) if password is not None else None,
        database=str(dbname) if dbname is not None else None,
        query={k: str(v) for k, v in params.items()},
    )


def _grant_classes(claim: str) -> tuple[type[AuthorizationCodeGrant], type[RefreshTokenGrant]]:
    # Subclasses carry the mode, so two apps in one process (never the case under gunicorn) differ.
    code = type("AuthorizationCodeGrant", (AuthorizationCodeGrant,), {"CLAIM": claim})
    refresh = type("RefreshTokenGrant", (RefreshTokenGrant,), {"CLAIM": claim})
    return code, refresh


def _setting(env: dict[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise RuntimeError(f"{name} is not set")
    return value


def create_app(environ: dict[str, str] | None = None) -> Flask:
    env = dict(os.environ if environ is None else environ)
    database_url = _setting(env, "AUTHLIB_DATABASE_URL")
    secret = _setting(env, "AUTHLIB_CLIENT_SECRET")
    claim = env.get("AUTHLIB_CLAIM", "documented").strip() or "documented"
    if claim not in CLAIM_MODES:
        raise RuntimeError(f"AUTHLIB_CLAIM must be one of {', '.join(CLAIM_MODES)}, not {claim!r}")
    session_key = (env.get("AUTHLIB_SECRET_KEY")
                   or hashlib.sha256(f"flask-session:{secret}".encode()).hexdigest())

    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=session_key,
        # The example's app.py: without it Authlib issues no refresh token at all.
        OAUTH2_REFRESH_TOKEN_GENERATOR=True,
        SQLALCHEMY_DATABASE_URI=sqlalchemy_url(database_url),
        SQLALCHEMY_ENGINE_OPTIONS={"pool_pre_ping": True, "connect_args": {"connect_timeout": 5}},
        AUTHLIB_CLAIM=claim,
    )
    db.init_app(app)
    with app.app_context():
        _create_schema_and_seed(secret)
        # Nothing pooled survives into gunicorn's fork (--preload): each worker opens its own.
        db.engine.dispose()

    query_client = create_query_client_func(db.session, OAuth2Client)
    save_token = create_save_token_func(db.session, OAuth2Token)
    authorization = AuthorizationServer(app, query_client=query_client, save_token=save_token)
    code_grant, refresh_grant = _grant_classes(claim)
    authorization.register_grant(code_grant, [CodeChallenge(required=True)])
    authorization.register_grant(refresh_grant)
    authorization.register_endpoint(create_revocation_endpoint(db.session, OAuth2Token))
    authorization.register_endpoint(TokenIntrospectionEndpoint)

    require_oauth = ResourceProtector()
    require_oauth.register_token_validator(create_bearer_token_validator(db.session, OAuth2Token)())

    _routes(app, authorization, require_oauth)
    return app


def _create_schema_and_seed(secret: str) -> None:
    """Tables (``db.create_all()``), the three clients and alice; idempotent, one process at a time."""
    with db.engine.begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": _SEED_LOCK})
        db.metadata.create_all(conn)
        with Session(bind=conn) as s:
            user = s.query(User).filter_by(username=USERNAME).first()
            if user is None:
                user = User(username=USERNAME)
                s.add(user)
                s.flush()
            for client_id, method in CLIENTS.items():
                client = s.query(OAuth2Client).filter_by(client_id=client_id).first()
                if client is None:
                    client = OAuth2Client(client_id=client_id, client_id_issued_at=int(time.time()))
                    s.add(client)
                client.user_id = user.id
                client.client_secret = "" if method == "none" else secret  # a restart may change it
                client.set_client_metadata({
                    "client_name": client_id,
                    "client_uri": "https://client.example/",
                    "grant_types": ["authorization_code", "refresh_token"],
                    "redirect_uris": [REDIRECT_URI],
                    "response_types": ["code"],
                    "scope": SCOPE,
                    "token_endpoint_auth_method": method,
                })
            s.flush()


def _current_user() -> User | None:
    uid = session.get("id")
    return db.session.get(User, uid) if uid is not None else None


def _routes(app: Flask, authorization: AuthorizationServer, require_oauth: ResourceProtector) -> None:
    @app.get("/login")
    def login_form() -> str:
        return ('<form method="post"><input name="username" value="alice">'
                '<button type="submit">Sign in</button></form>')

    @app.post("/login")
    def login() -> Any:
        # The example's home(): the named user (created if missing) is now logged in.
        username = (request.form.get("username") or "").strip()
        if not username:
            return Response("username is required\n", status=400, mimetype="text/plain")
        user = User.query.filter_by(username=username).first()
        if not user:
            user = User(username=username)
            db.session.add(user)
            db.session.commit()
        session["id"] = user.id
        next_page = request.args.get("next") or request.form.get("next")
        # Only back into this server: an open redirect here would be a finding of its own.
        if next_page and next_page.startswith("/") and not next_page.startswith("//"):
            return redirect(next_page)
        return Response("logged in\n", mimetype="text/plain")

    @app.get("/oauth/authorize")
    def authorize() -> Any:
        user = _current_user()
        if not user:
            # As the example: log in first, then come back here.
            return redirect("/login?" + urlencode({"next": request.full_path}))
        # Consent is automatic for the logged-in user (the example shows a form here):
        # 302 to redirect_uri?code=…&state=…, or Authlib's error response.
        return authorization.create_authorization_response(grant_user=user)

    @app.post("/oauth/token")
    def issue_token() -> Any:
        return authorization.create_token_response()

    @app.post("/oauth/revoke")
    def revoke_token() -> Any:
        return authorization.create_endpoint_response("revocation")

    @app.post("/oauth/introspect")
    def introspect_token() -> Any:
        return authorization.create_endpoint_response(IntrospectionEndpoint.ENDPOINT_NAME)

    @app.get("/api/me")
    @require_oauth("profile")
    def api_me() -> Any:
        user = current_token.user
        return jsonify(id=user.id, username=user.username)
