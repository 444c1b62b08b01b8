"""PKCE checks (RFC 7636; RFC 9700 §2.1.1): vector, right/wrong verifiers, downgrade, syntax, timing."""

from __future__ import annotations

import _operator
import hmac
import secrets
import sys
import threading
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import psycopg
from psycopg.abc import Buffer
from psycopg.pq import Format
from psycopg.types.string import TextLoader
from psycopg_pool import ConnectionPool

from harness import rfc7636
from harness.checks import Context, check
from harness.checks._common import REDIRECT, code_row, short, store_code
from harness.database import CONNECT_TIMEOUT_S, POOL_TIMEOUT_S, Database
from harness.scenario import Inconclusive, NotApplicable
from harness.targets.capabilities import Capability


@check(
    id="pkce.appendix-b",
    title="RFC 7636 Appendix B test vector redeems",
    source="RFC 7636 §4.2, Appendix B",
    severity="high",
    expected="A code stored with the Appendix B challenge (E9Melhoa…) redeems with the Appendix B "
             "verifier (dBjftJeZ…): S256 = BASE64URL(SHA-256(verifier)), no padding.",
)
def appendix_b(ctx: Context) -> None:
    target, client = ctx.target(), ctx.client()
    code = store_code(ctx, target, "vector", client, challenge=rfc7636.APPENDIX_B_CHALLENGE)
    ctx.sc.attempt("exchange with the Appendix B verifier", "ok",
                   lambda: target.exchange_code(code, client, REDIRECT, rfc7636.APPENDIX_B_VERIFIER))


@check(
    id="pkce.right-verifier",
    title="The right verifier redeems",
    source="RFC 7636 §4.6",
    severity="high",
    expected="A fresh 43-character verifier whose S256 challenge was stored redeems the code.",
)
def right_verifier(ctx: Context) -> None:
    target, client = ctx.target(), ctx.client()
    for i in range(3):
        verifier = rfc7636.new_verifier()
        code = store_code(ctx, target, f"right-{i}", client, verifier=verifier)
        ctx.sc.attempt(f"exchange with its own verifier (#{i + 1})", "ok",
                       partial(target.exchange_code, code, client, REDIRECT, verifier))


@check(
    id="pkce.wrong-verifier",
    title="A wrong verifier, or the public challenge sent as verifier, is refused",
    source="RFC 7636 §4.6; RFC 9700 §2.1.1",
    severity="critical",
    expected="Refused: another well-formed verifier, and the challenge itself (an attacker who saw "
             "the authorization request knows it) sent as the verifier.",
)
def wrong_verifier(ctx: Context) -> None:
    target, client = ctx.target(), ctx.client()
    for i, what in enumerate(("another well-formed verifier",
                              "the challenge itself (read from the front channel)")):
        verifier = rfc7636.new_verifier()
        challenge = rfc7636.s256_challenge(verifier)
        code = store_code(ctx, target, f"wrong-{i}", client, verifier=verifier)
        sent = rfc7636.new_verifier() if i == 0 else challenge
        ctx.sc.attempt(f"exchange with {what}", "refused",
                       partial(target.exchange_code, code, client, REDIRECT, sent))


@check(
    id="pkce.missing-verifier",
    title="A challenge was stored but no verifier is sent",
    source="RFC 7636 §4.6",
    severity="critical",
    expected="Refused: a code bound to a challenge never redeems without a verifier.",
)
def missing_verifier(ctx: Context) -> None:
    target, client = ctx.target(), ctx.client()
    code = store_code(ctx, target, "no-verifier", client, verifier=rfc7636.new_verifier())
    ctx.sc.attempt("exchange without code_verifier", "refused",
                   lambda: target.exchange_code(code, client, REDIRECT, None))


@check(
    id="pkce.plain",
    title="The `plain` method is refused",
    source="RFC 7636 §4.2, §4.4.1; RFC 9700 §2.1.1",
    severity="low",
    expected="Storing a `plain` challenge is refused (an unsupported transformation is an "
             "invalid_request at the authorization endpoint, RFC 7636 §4.4.1; only S256 keeps the "
             "verifier out of the front channel, RFC 9700 §2.1.1); a verifier equal to the "
             "challenge never redeems.",
)
def plain(ctx: Context) -> None:
    from harness.repository import AuthCodeParams

    target, client = ctx.target(), ctx.client()
    verifier = rfc7636.new_verifier()
    code = ctx.name("code-plain")
    if ctx.remote:
        issued = ctx.sc.attempt("request a code with code_challenge_method=plain", "refused",
                                lambda: target.mint_code(client, challenge=verifier, method="plain"))
        code = issued.value if issued.ok else code
        stored = issued
    else:
        params = AuthCodeParams(code=code, client_id=client, user_id=ctx.user, redirect_uri=REDIRECT,
                                scope="openid", code_challenge=verifier, code_challenge_method="plain")
        stored = ctx.sc.attempt("store a code with code_challenge_method=plain", "refused",
                                lambda: target.store_authorization_code(params))
    if stored.ok:
        out = ctx.sc.attempt("exchange it with verifier = challenge", "refused",
                             lambda: target.exchange_code(code, client, REDIRECT, verifier))
        if ctx.has(Capability.ROWS, Capability.DIGEST):
            row = code_row(ctx, target, code)
            burnt = bool(row and row["used_at"])
            ctx.sc.note("the stored row afterwards",
                        "used_at set: " + ("redeemed with the public challenge as verifier" if out.ok
                                           else "burnt by a request that could never succeed")
                        if burnt else "used_at NULL: the code is still unspent")


@check(
    id="pkce.downgrade",
    title="A verifier sent for a code stored without a challenge (PKCE downgrade)",
    source="RFC 9700 §2.1.1",
    severity="high",
    expected="Refused: a token request with a code_verifier is accepted only if a code_challenge "
             "was present in the authorization request (MUST, RFC 9700 §2.1.1).",
)
def downgrade(ctx: Context) -> None:
    target, client = ctx.target(), ctx.client()
    code = store_code(ctx, target, "downgrade", client)
    ctx.sc.attempt("exchange the challenge-less code with a code_verifier", "refused",
                   lambda: target.exchange_code(code, client, REDIRECT, rfc7636.new_verifier()))


#: Verifiers outside RFC 7636 §4.1 (43–128 characters of ALPHA / DIGIT / "-" / "." / "_" / "~").
_BAD_VERIFIERS = {
    "42 characters (too short)": "a" * 42,
    "129 characters (too long)": "b" * 129,
    "a space and a '+' (outside unreserved)": "c" * 41 + " +",
    "non-ASCII characters": "é" * 43,
    "3 characters": "abc",
}


@check(
    id="pkce.verifier-syntax",
    title="Verifier length and charset (43–128 unreserved characters)",
    source="RFC 7636 §4.1",
    severity="low",
    expected="A verifier outside 43–128 unreserved characters is refused even when its S256 "
             "matches the stored challenge (short verifiers are guessable).",
)
def verifier_syntax(ctx: Context) -> None:
    target, client = ctx.target(), ctx.client()
    for i, (what, verifier) in enumerate(_BAD_VERIFIERS.items()):
        code = store_code(ctx, target, f"syntax-{i}", client, verifier=verifier)
        ctx.sc.attempt(f"exchange with a matching verifier of {what}", "refused",
                       partial(target.exchange_code, code, client, REDIRECT, verifier))


# -- constant-time comparison ----------------------------------------------------------------
#
# Traced, not timed: over a database round trip (~100 µs of jitter on a shared machine) the
# nanoseconds an early-exit ``==`` leaks on a 43-byte string cannot be measured soundly. Nor can
# the source be read for it: an operand renamed from ``challenge`` to ``a`` hides an ``==``, and a
# harmless ``len(a) != len(b)`` before ``compare_digest`` looks like one. So the check follows the
# *value*: the stored challenge comes back from the database as a ``str`` subclass that records
# every ``==``/``!=`` it takes part in, and every call of the constant-time primitive is recorded
# with its arguments. Which names the target gives them does not matter.


class _Probe:
    """What became of the watched challenges while the target redeemed codes that hold them."""

    def __init__(self, watched: frozenset[str]) -> None:
        self.watched = watched
        self.encoded = frozenset(w.encode() for w in watched)
        self.reads = 0
        self.equalities: list[dict[str, Any]] = []
        self.primitives: list[dict[str, Any]] = []
        #: Calls of a constant-time primitive that did not go through a patched name (bound before
        #: the check, in a closure or a default argument): their arguments could not be seen.
        self.unseen_primitive_calls = 0
        self._lock = threading.Lock()

    def read(self, value: str) -> str:
        with self._lock:
            self.reads += 1
        return _TaintedStr(value, self)

    def compared(self, op: str, tainted: str | bytes, other: object) -> None:
        """An ``==``/``!=`` on a tainted value. Flagged when ``other`` is a non-empty value of the
        same kind (str with str, bytes with bytes) and at least as long as the challenge or 16
        characters: what a verifier or a challenge computed from one looks like. An empty string,
        ``None`` or a method name is a sentinel test that compares nothing secret, and a ``len()``
        pre-check never calls ``__eq__`` on the value at all."""
        # -1: not of the tainted value's kind, so Python compares no content at all.
        size = -1
        if isinstance(other, str | bytes | bytearray | memoryview) and (
                isinstance(other, str) == isinstance(tainted, str)):
            size = len(other)
        derived = isinstance(other, _TaintedStr | _TaintedBytes)  # compared with itself: no input
        flagged = not derived and size > 0 and size >= min(_SECRET_SIZED, len(tainted))
        row = {"comparison": op, "where": _caller(), "stored challenge": short(_plain(tainted)),
               "other operand": f"{type(other).__name__}, {size} long" if size >= 0
               else type(other).__name__, "flagged": flagged}
        with self._lock:
            self.equalities.append(row)

    def primitive(self, name: str, a: object, b: object) -> None:
        """A constant-time comparison was called: did it receive a watched challenge?"""
        tainted: list[object] = [x for x in (a, b) if isinstance(x, _TaintedStr | _TaintedBytes)]
        # By value too: a target may copy the challenge first (``bytes(challenge, "ascii")``).
        hit = tainted or [x for x in (a, b) if (type(x) is str and x in self.watched)
                          or (type(x) is bytes and x in self.encoded)]
        if hit:
            with self._lock:
                self.primitives.append({"primitive": name, "where": _caller(),
                                        "received": f"the stored challenge ({type(hit[0]).__name__})"})

    @property
    def flagged(self) -> list[dict[str, Any]]:
        return [e for e in self.equalities if e["flagged"]]


#: Below this length a compared value is a sentinel, not a secret (``""``, ``"S256"``, ``"plain"``).
_SECRET_SIZED = 16


def _plain(value: str | bytes) -> str:
    """A tainted value as an exact ``str`` (evidence must not keep recording comparisons)."""
    return str.__str__(value) if isinstance(value, str) else bytes(value).decode("ascii", "replace")


def _caller() -> str:
    """``file:line`` of the first frame outside this module: the target's comparison."""
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
    if frame is None:
        return "?"
    return f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno}"


class _TaintedStr(str):
    """A stored challenge as the database handed it to the target: records its comparisons.

    The taint follows what a target does to normalise the value before comparing (``encode``,
    ``strip``, slicing, case, ``+ "="``); through any other transformation (``base64`` decode, a
    hash) it is lost, and then the check can only say ``inconclusive``, never ``holds``.
    """

    _probe: _Probe

    def __new__(cls, value: str, probe: _Probe) -> _TaintedStr:
        obj = super().__new__(cls, value)
        obj._probe = probe
        return obj

    __hash__ = str.__hash__

    def __eq__(self, other: object) -> bool:
        self._probe.compared("==", self, other)
        return str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        self._probe.compared("!=", self, other)
        return str.__ne__(self, other)

    def _keep(self, value: str) -> _TaintedStr:
        return _TaintedStr(value, self._probe)

    def __str__(self) -> str:
        return self

    def __getitem__(self, key: Any) -> str:
        return self._keep(str.__getitem__(self, key))

    def __add__(self, other: str) -> str:
        return self._keep(str.__add__(self, other))

    def __radd__(self, other: str) -> str:
        return self._keep(str.__add__(other, self))

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return _TaintedBytes(str.encode(self, encoding, errors), self._probe)

    def strip(self, chars: str | None = None) -> str:
        return self._keep(str.strip(self, chars))

    def lstrip(self, chars: str | None = None) -> str:
        return self._keep(str.lstrip(self, chars))

    def rstrip(self, chars: str | None = None) -> str:
        return self._keep(str.rstrip(self, chars))

    def lower(self) -> str:
        return self._keep(str.lower(self))

    def upper(self) -> str:
        return self._keep(str.upper(self))

    def casefold(self) -> str:
        return self._keep(str.casefold(self))

    def replace(self, old: str, new: str, count: int = -1) -> str:  # type: ignore[override]
        return self._keep(str.replace(self, old, new, count))

    def removesuffix(self, suffix: str) -> str:
        return self._keep(str.removesuffix(self, suffix))

    def removeprefix(self, prefix: str) -> str:
        return self._keep(str.removeprefix(self, prefix))


class _TaintedBytes(bytes):
    """The encoded challenge (``challenge.encode()``): records its comparisons too."""

    _probe: _Probe

    def __new__(cls, value: bytes, probe: _Probe) -> _TaintedBytes:
        obj = super().__new__(cls, value)
        obj._probe = probe
        return obj

    __hash__ = bytes.__hash__

    def __eq__(self, other: object) -> bool:
        self._probe.compared("==", self, other)
        return bytes.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        self._probe.compared("!=", self, other)
        return bytes.__ne__(self, other)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return _TaintedStr(bytes.decode(self, encoding, errors), self._probe)

    def strip(self, chars: Any = None) -> bytes:
        return _TaintedBytes(bytes.strip(self, chars), self._probe)

    def rstrip(self, chars: Any = None) -> bytes:
        return _TaintedBytes(bytes.rstrip(self, chars), self._probe)


def _tainting_loaders(probe: _Probe) -> list[type[TextLoader]]:
    """Text loaders that hand a watched value back as ``_TaintedStr``, whatever column or alias
    (``SELECT *``, ``RETURNING``, a view) it came through: the value, not the name, is watched."""

    class Text(TextLoader):
        def load(self, data: Buffer) -> bytes | str:
            value = super().load(data)
            return probe.read(value) if isinstance(value, str) and value in probe.watched else value

    class Binary(Text):
        format = Format.BINARY

    return [Text, Binary]


class _TracingDatabase(Database):
    """The check's database again, over pools of its own whose connections load text through
    ``_tainting_loaders``: the target under test is built on it, nothing else uses it, and it is
    closed with the check (the shared pools are never touched)."""

    def __init__(self, base: Database, probe: _Probe) -> None:
        super().__init__(base.url, pool_size=4)
        self._loaders = _tainting_loaders(probe)
        self._traced: dict[str, ConnectionPool] = {}
        self._traced_lock = threading.Lock()

    def _taint(self, conn: psycopg.Connection[Any]) -> None:
        for loader in self._loaders:
            for type_name in ("text", "varchar", "bpchar"):
                conn.adapters.register_loader(type_name, loader)

    def _traced_pool(self, name: str) -> ConnectionPool:
        with self._traced_lock:
            pool = self._traced.get(name)
            if pool is None:
                pool = ConnectionPool(self.url, min_size=1, max_size=4, name=f"traced-{name}",
                                      kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S},
                                      configure=self._taint, open=False, timeout=POOL_TIMEOUT_S)
                pool.open(wait=True, timeout=CONNECT_TIMEOUT_S * 3)
                self._traced[name] = pool
            return pool

    @property
    def read_pool(self) -> ConnectionPool:
        return self._traced_pool("read")

    @property
    def write_pool(self) -> ConnectionPool:
        return self._traced_pool("write")

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        conn = super().connect(**kwargs)
        self._taint(conn)
        return conn

    def close(self) -> None:
        for pool in self._traced.values():
            pool.close(timeout=2)
        super().close()


def _constant_time_primitives() -> dict[int, Any]:
    """The stdlib's constant-time comparisons, by identity (``hmac`` and ``secrets`` share one)."""
    found = [hmac.compare_digest, secrets.compare_digest, getattr(_operator, "_compare_digest", None)]
    return {id(f): f for f in found if f is not None}


@contextmanager
def _recording_primitives(probe: _Probe) -> Iterator[None]:
    """Every module global bound to a constant-time primitive (``hmac.compare_digest``, a
    reviewer's ``from hmac import compare_digest``) is replaced by a recording wrapper for the
    block; a profiler counts the calls that reach the primitive some other way (their arguments
    cannot be seen, so they can make the verdict ``inconclusive``, never ``holds``)."""
    originals = _constant_time_primitives()
    wrappers: dict[int, Callable[[Any, Any], bool]] = {}
    codes: set[types.CodeType] = set()
    for key, original in originals.items():
        def wrapper(a: Any, b: Any, _original: Any = original) -> bool:
            probe.primitive("compare_digest", a, b)
            return bool(_original(a, b))
        wrappers[key] = wrapper
        codes.add(wrapper.__code__)
    patched: list[tuple[dict[str, Any], str, Any]] = []
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None) if isinstance(module, types.ModuleType) else None
        if not isinstance(namespace, dict):
            continue
        for name, value in list(namespace.items()):
            if value is not None and originals.get(id(value)) is value:
                namespace[name] = wrappers[id(value)]
                patched.append((namespace, name, value))

    def profiler(frame: types.FrameType, event: str, arg: Any) -> None:
        if event == "c_call" and arg is not None and originals.get(id(arg)) is arg \
                and frame.f_code not in codes:
            probe.unseen_primitive_calls += 1

    previous = sys.getprofile()
    sys.setprofile(profiler)
    try:
        yield
    finally:
        sys.setprofile(previous)
        for namespace, name, value in patched:
            namespace[name] = value


@check(
    id="pkce.constant-time",
    title="The verifier check compares in constant time",
    source="RFC 7636 §4.6; the seed's subtle::ConstantTimeEq",
    severity="low",
    expected="The stored challenge is compared with a constant-time primitive "
             "(hmac.compare_digest / subtle::ConstantTimeEq), never with == / != against the "
             "challenge computed from the verifier (or the verifier itself).",
    requires={Capability.IN_PROCESS, Capability.STORE},
)
def constant_time(ctx: Context) -> None:
    """Follows the stored challenge from the database to the comparison (see ``_Probe``).

    Two codes are stored with S256 challenges the check chose, and the target, built on a
    database whose text loader hands exactly those values back as a ``_TaintedStr``, redeems one
    with a wrong verifier and one with the right verifier. *Violated*: the challenge (or a value
    derived from it) met ``==``/``!=`` with a verifier-sized value, an early-exit comparison that
    leaks the matching prefix's length (RFC 7636 §4.6 compares the challenge; the seed uses
    ``subtle::ConstantTimeEq``). *Holds*: no such comparison, and ``compare_digest`` received the
    challenge. *Inconclusive*: the challenge was read but reached neither in a way this can see (it
    was transformed first, or compared by code of the target's own). *Not applicable*: the target
    never read the challenge back through the database it was built on.
    """
    client = ctx.client()
    verifiers = [rfc7636.new_verifier() for _ in range(2)]
    probe = _Probe(frozenset(rfc7636.s256_challenge(v) for v in verifiers))
    traced = _TracingDatabase(ctx.rows, probe)
    try:
        target = ctx.target(database=traced)
        wrong, right = (store_code(ctx, target, f"ct-{what}", client, verifier=v)
                        for what, v in zip(("wrong", "right"), verifiers, strict=True))
        with _recording_primitives(probe):
            ctx.sc.attempt("exchange with a wrong verifier (traced)", "refused",
                           lambda: target.exchange_code(wrong, client, REDIRECT, rfc7636.new_verifier()),
                           judged=False)
            ctx.sc.attempt("exchange another code with its right verifier (traced)", "ok",
                           lambda: target.exchange_code(right, client, REDIRECT, verifiers[1]),
                           judged=False)
        close = getattr(target, "close", None)
        if callable(close):
            close()
    finally:
        traced.close()
    ctx.sc.note("stored challenges read back from the database (traced values)", probe.reads)
    if not probe.reads:
        raise NotApplicable("the target never read the code_challenge it was given back through the "
                            "database handed to its factory (its own connection, or the value stored "
                            "transformed): its comparisons cannot be followed")
    flagged = probe.flagged
    ctx.sc.observe("== / != between the stored challenge and a verifier-sized value",
                   expected="none", ok=not flagged,
                   observed="; ".join(f"{e['where']} {e['comparison']} ({e['other operand']})"
                                      for e in flagged) or "none")
    unseen = (f" (+{probe.unseen_primitive_calls} compare_digest calls whose arguments could not "
              "be seen)" if probe.unseen_primitive_calls else "")
    ctx.sc.observe("constant-time comparisons that received the stored challenge", expected="≥ 1",
                   observed=f"{len(probe.primitives)}{unseen}", ok=bool(probe.primitives), judged=False)
    ctx.sc.evidence.extend([*probe.equalities, *probe.primitives])
    if not flagged and not probe.primitives:
        raise Inconclusive("the stored challenge reached neither == nor a constant-time primitive "
                           "this check can see (transformed first, or compared by other means)")
