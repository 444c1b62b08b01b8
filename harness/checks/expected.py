"""What each shipped target is expected to show: the checks it violates (everything else holds).

This is the contract the main job (``python3 dev.py run``) and the tests hold the shipped targets
to, not a result: the verdicts are always measured, then compared with this table.

* ``faithful`` violates exactly the seed's gaps (the findings of the review);
* ``hardened`` violates nothing (every finding closed, see ``harness.sut.hardened``);
* ``naive`` violates every check but one (see ``harness.sut.naive`` for its bugs): it is
  the proof that each check can fail.

The checks added for the properties a seeded-bug study found unexamined (issue 10: the
``repository.*`` methods no grant calls, ``token.access-expiry``, ``token.resource``,
``token.scope``, ``refresh.grace-cross-client`` and the wider ``code.redirect-mismatch``) all hold
on ``faithful``, so none of them is a finding of the seed: its cleanup deletes by ``expires_at``
and counts the rows; its revocation, lookups and ``validate_refresh_token`` go through the at-rest
digest and read every column they should (consumed, client, expiry); its rotation copies the
claim's scope and resource; its access tokens carry and are checked against ``exp``
(RFC 6749 §5.1); its grace window compares the client before the clock (RFC 9700 §4.14.2), and a
consumed token presented by another client falls through to family revocation; and it compares
the redirect URI as an exact string (RFC 9700 §2.1). ``naive`` carries one bug for each.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from harness.checks import CATALOGUE, CheckResult, Verdict

#: The seed's gaps, as ``harness scan --target faithful`` reports them.
FAITHFUL_FINDINGS = frozenset({
    "pkce.plain",
    "pkce.downgrade",
    "pkce.verifier-syntax",
    "code.redirect-omitted",
    "code.client-binding",
    "code.failed-redemption",
    "replay.between-claim-and-link",
    "replay.access-tokens",
    "replay.log-secrets",
    "replay.audit-trail",
    "refresh.concurrent",
    "refresh.grace-policy",
})

#: The only check the negative control passes (faithful fails it instead).
NAIVE_HOLDS = frozenset({"pkce.verifier-syntax"})


def expected_violations(target: str) -> frozenset[str]:
    """The check ids ``target`` (a shipped one) is expected to violate."""
    if target == "faithful":
        return FAITHFUL_FINDINGS
    if target == "hardened":
        return frozenset()
    if target == "naive":
        return frozenset(CATALOGUE) - NAIVE_HOLDS
    raise KeyError(f"no expectations for target {target!r}")


def expected_verdict(target: str, check_id: str) -> Verdict:
    return "violated" if check_id in expected_violations(target) else "holds"


def surprises(results: Sequence[CheckResult]) -> list[dict[str, Any]]:
    """Every result whose verdict differs from the expectation (empty = every target as expected)."""
    return [{"target": r.target, "id": r.id, "expected": expected_verdict(r.target, r.id),
             "verdict": r.verdict}
            for r in results if r.verdict != expected_verdict(r.target, r.id)]
