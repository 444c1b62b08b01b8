"""Concurrency check: N racers released together on each code elect exactly one winner (RFC 6749 §4.1.2)."""

from __future__ import annotations

from harness.checks import Context, check
from harness.race import RaceReport, race_http, race_threads, seed_codes
from harness.scenario import Inconclusive

#: Small enough for a scan to take seconds, large enough that a non-atomic claim is always caught.
RACERS = 8
CODES = 20
#: Below this fraction of codes with ≥ 2 attempts in flight at once, a "holds" would prove nothing.
MIN_RACED_FRACTION = 0.5


@check(
    id="race.single-winner",
    title=f"{RACERS} racers on each of {CODES} codes: exactly one winner per code",
    source="RFC 6749 §4.1.2, §10.5",
    severity="critical",
    expected="Every code is won exactly once: zero double wins, zero codes with no winner, with "
             "the racers measured to overlap (released by a barrier per code).",
)
def single_winner(ctx: Context) -> None:
    if ctx.remote:
        _over_http(ctx)
        return
    target = ctx.target()
    seed = ctx.name("race")
    client = ctx.client("racer")
    ctx.sc.setup(f"seed {CODES} codes",
                 lambda: seed_codes(target, seed, CODES, client=client, user=ctx.user, register=False))
    report = race_threads(target, racers=RACERS, codes=CODES, seed=seed, client=client)
    _judge(ctx, report)


def _judge(ctx: Context, report: RaceReport) -> None:
    ov, wins = report.overlap.summary, report.winners.summary
    raced = float(ov.get("raced_fraction") or 0.0)
    ctx.sc.observe("codes with ≥ 2 racers in flight at once", expected=f"≥ {MIN_RACED_FRACTION:.0%}",
                   observed=f"{raced:.0%} (median start spread {ov.get('median_spread_us')} µs)",
                   ok=True, judged=False)
    ctx.sc.observe("codes won more than once (distinct token sets)", expected="0",
                   observed=wins["double_wins"], ok=wins["double_wins"] == 0)
    ctx.sc.observe("codes with no winner", expected="0", observed=wins["no_winner"],
                   ok=wins["no_winner"] == 0)
    ctx.sc.evidence.append({**{f"winners.{k}": v for k, v in wins.items()},
                            **{f"overlap.{k}": v for k, v in ov.items()}})
    ctx.sc.evidence.extend(report.winners.evidence[:10])
    if raced < MIN_RACED_FRACTION and report.winners.valid:
        raise Inconclusive(f"only {raced:.0%} of the codes were really raced")


def _over_http(ctx: Context) -> None:
    """The same race against a real server: codes minted just in time, racers in processes."""
    client = ctx.client("racer")
    report = race_http(ctx.target_name, racers=RACERS, codes=CODES, client=client, timeout_s=120)
    concurrency = int(report.stats.get("server_concurrency") or 1)
    ctx.sc.note("server concurrency (declared)", concurrency)
    if report.stats.get("errors"):
        ctx.sc.note("errors", "; ".join(report.stats["errors"][:3]))
    after = report.stats.get("after_race") or {}
    if after:
        ctx.sc.note("after the race", f"{after['replays_refused']}/{after['codes_replayed']} replays "
                    f"refused; {after['refresh_tokens_usable_after_replay']} of "
                    f"{after['winning_token_sets']} winning refresh tokens still usable")
    _judge(ctx, report)
    if concurrency <= 1 and report.winners.valid:
        raise Inconclusive("the server declares concurrency 1: its requests never run in parallel, "
                           "so a race there proves nothing")
