"""Named step hooks: where a system under test lets a scenario pause it, in one place.

A target calls each hook of ``self.hooks`` with the name of the step it has just reached
(``self._step(StepHook.AFTER_CLAIM)``); a scenario pauses it there to force an interleaving
(``harness.scenario.force_interleaving``). ``StepHook`` values are plain strings, so a
reviewer's own target may call its hooks with ``"after_claim"`` and be understood.
"""

from __future__ import annotations

from enum import StrEnum


class StepHook(StrEnum):
    """The steps of the grant flows (RFC 6749 §4.1.3, §6) a target may announce."""

    #: The naive control, between its SELECT and its UPDATE (the gap a race falls into).
    BETWEEN_READ_AND_WRITE = "between_read_and_write"
    #: The code has just been claimed (``used_at`` set), nothing issued yet.
    AFTER_CLAIM = "after_claim"
    #: ``validate_authorization_code`` returned; the refresh token is next.
    AFTER_VALIDATE = "after_validate"
    #: The refresh token is stored, the code not yet linked to it (the seed's window).
    BEFORE_LINK = "before_link"
    #: The code is linked to its refresh token.
    AFTER_LINK = "after_link"
    #: A refresh token has just been consumed, its successor not yet issued.
    AFTER_CONSUME = "after_consume"
