"""What a target can do besides the grants, and so which checks can run on it.

Every target can redeem a code and refresh a token (RFC 6749 §4.1.3, §6):
in process, or over HTTP. Some checks need more, and declare it
(``@check(..., requires={Capability.CLOCK})``); the runner compares that
with what the target offers *before* the check runs and answers
``not_applicable``, naming what is missing, rather than ``error`` halfway
(as psycopg's ``capabilities.has_pipeline(check=True)`` says why not).
This list is the whole contract a foreign target must meet.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Any


class Capability(StrEnum):
    """One optional capability of a target."""

    #: The harness can put a code of its choosing into the target (``store_authorization_code``).
    STORE = "store"
    #: The harness can read the target's rows (same database) to show and judge what it wrote.
    ROWS = "rows"
    #: The target's at-rest digest function (``hash``): rows can be found by the raw value.
    DIGEST = "digest"
    #: Named pauses between the grant's steps (``hooks``): interleavings can be forced.
    STEP_HOOKS = "step_hooks"
    #: An injectable clock (``clock``): expiry without sleeping.
    CLOCK = "clock"
    #: The target runs in this interpreter: its log lines can be captured, its code traced.
    IN_PROCESS = "in_process"
    #: The target can be built again with other settings (a grace window, another pepper).
    OPTIONS = "options"
    #: The repository's lower methods, every one of ``REPOSITORY_METHODS`` (``validate_refresh_token``,
    #: ``revoke_refresh_token``, ``cleanup_expired_refresh_tokens``, …).
    REPOSITORY = "repository"
    #: Ask whether an access token still works (RFC 7662 introspection, or a bearer probe).
    INTROSPECT = "introspect"


def missing(required: Iterable[Capability], offered: Iterable[Capability]) -> list[Capability]:
    """The capabilities in ``required`` that ``offered`` lacks, in declaration order."""
    have, need = set(offered), set(required)
    return [c for c in Capability if c in need and c not in have]


def describe(caps: Iterable[Capability]) -> str:
    return ", ".join(c.value for c in caps)


#: The seed's lower repository methods (RFC 6749 §4.1.2, §6 bookkeeping) that checks call directly,
#: beyond the grants: exactly those, so a target is never denied a check for a method no check
#: calls. ``REPOSITORY`` is offered only when *every* one is there: a check that declares it may call
#: any of them, so a target lacking one gets ``not_applicable``, never an ``AttributeError`` halfway
#: (``tests/test_finding_power.py`` holds this list to the checks' source).
REPOSITORY_METHODS = (
    "get_client_id_from_auth_code",
    "store_refresh_token",
    "validate_refresh_token",
    "find_refresh_token_family",
    "find_client_id_from_refresh_token",
    "revoke_refresh_token",
    "cleanup_expired_refresh_tokens",
)


def capabilities_of(target: Any, *, db: Any = None, clock: Any = None) -> frozenset[Capability]:
    """What ``target`` offers: declared (``capabilities`` attribute) or read off what it has.

    An HTTP target declares its own. An in-process object is judged by what it has, reading
    exactly what the checks then use, so a reviewer's duck-typed class (its own SQL, its own
    logger, no hooks, maybe no ``hash``) gets every check it can take part in and
    ``not_applicable`` for the others:

    * ``STORE``: a callable ``store_authorization_code`` (``_common.store_code``);
    * ``ROWS``: ``target.db`` is the database the harness handed its factory (``db``, when
      given): the checks read *that* database's rows and call ``target.db.ensure_party``; a
      target that keeps its own connection elsewhere offers no rows the harness can see;
    * ``DIGEST``: a callable ``hash`` (rows are looked up by ``target.hash(raw)``);
    * ``STEP_HOOKS``: a ``hooks`` list (``force_interleaving`` appends to it);
    * ``CLOCK``: ``target.clock`` *is* the clock handed to the factory (``clock``, when given):
      a target that keeps a clock of its own would not move when the check advances time, and
      an expiry check would then report a code that never expires;
    * ``INTROSPECT``: a callable ``introspect_access_token``;
    * ``REPOSITORY``: every method of ``REPOSITORY_METHODS``;
    * ``OPTIONS``: a ``refresh_reuse_grace_s`` attribute (the factory takes that option).
    """
    declared = getattr(target, "capabilities", None)
    if declared is not None:
        return frozenset(Capability(c) for c in declared)
    caps = {Capability.IN_PROCESS}
    if callable(getattr(target, "store_authorization_code", None)):
        caps.add(Capability.STORE)
    if callable(getattr(target, "hash", None)):
        caps.add(Capability.DIGEST)
    own_db = getattr(target, "db", None)
    if own_db is not None and (db is None or own_db is db):
        caps.add(Capability.ROWS)
    if isinstance(getattr(target, "hooks", None), list):
        caps.add(Capability.STEP_HOOKS)
    own_clock = getattr(target, "clock", None)
    if callable(getattr(own_clock, "now", None)) and (clock is None or own_clock is clock):
        caps.add(Capability.CLOCK)
    if callable(getattr(target, "introspect_access_token", None)):
        caps.add(Capability.INTROSPECT)
    if all(callable(getattr(target, m, None)) for m in REPOSITORY_METHODS):
        caps.add(Capability.REPOSITORY)
    if hasattr(target, "refresh_reuse_grace_s"):
        caps.add(Capability.OPTIONS)
    return frozenset(caps)
