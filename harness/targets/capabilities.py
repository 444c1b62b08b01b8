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
    #: The repository's lower methods (``validate_refresh_token``, ``consume_refresh_token``, …).
    REPOSITORY = "repository"
    #: Ask whether an access token still works (RFC 7662 introspection, or a bearer probe).
    INTROSPECT = "introspect"


def missing(required: Iterable[Capability], offered: Iterable[Capability]) -> list[Capability]:
    """The capabilities in ``required`` that ``offered`` lacks, in declaration order."""
    have, need = set(offered), set(required)
    return [c for c in Capability if c in need and c not in have]


def describe(caps: Iterable[Capability]) -> str:
    return ", ".join(c.value for c in caps)


def capabilities_of(target: Any) -> frozenset[Capability]:
    """What ``target`` offers: declared (``capabilities`` attribute) or read off its methods.

    An HTTP target declares its own. An in-process object is judged by what
    it has, so a reviewer's duck-typed class with its own SQL gets exactly
    the checks it can take part in.
    """
    declared = getattr(target, "capabilities", None)
    if declared is not None:
        return frozenset(Capability(c) for c in declared)
    caps = {Capability.IN_PROCESS}
    if callable(getattr(target, "store_authorization_code", None)):
        caps.add(Capability.STORE)
    if callable(getattr(target, "hash", None)):
        caps.add(Capability.DIGEST)
    if getattr(target, "db", None) is not None:
        caps.add(Capability.ROWS)
    if isinstance(getattr(target, "hooks", None), list):
        caps.add(Capability.STEP_HOOKS)
    if callable(getattr(getattr(target, "clock", None), "now", None)):
        caps.add(Capability.CLOCK)
    if callable(getattr(target, "introspect_access_token", None)):
        caps.add(Capability.INTROSPECT)
    if all(callable(getattr(target, m, None)) for m in ("validate_refresh_token", "consume_refresh_token")):
        caps.add(Capability.REPOSITORY)
    if hasattr(target, "refresh_reuse_grace_s"):
        caps.add(Capability.OPTIONS)
    return frozenset(caps)
