"""What the notebooks show: tables of the rows involved, race timelines, the isolation matrix and charts."""

from __future__ import annotations

import atexit
import hashlib
import hmac
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from harness.at_rest import hash_at_rest
from harness.database import Database
from harness.errors import OAuthError, SetupError
from harness.history import History
from harness.scope import RunScope

#: The notebooks' pepper when ``HARNESS_AT_REST_PEPPER`` is unset (the same as ``dev.py``'s),
#: so the digests they show are the same on every run.
DEMO_PEPPER = "claimcheck-demo-pepper"
#: The notebooks' clock starts here (``ManualClock(DEMO_EPOCH)``): every time they show is fixed.
DEMO_EPOCH = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
#: How many hex digits of a 64-hex digest a table shows.
SHORT = 10

_DIGEST = re.compile(r"[0-9a-f]{64}")
_SHORT = re.compile(r"(revoked:)?[0-9a-f]{6,63}…")
OUTCOME_COLOURS = {"ok": "#2e7d32", "fail": "#9e9e9e", "info": "#ef6c00"}
#: The least value of the notebooks' count parameters (a race needs two racers and a code).
PARAMETER_MINIMUMS = {"racers": 2, "codes": 1, "matrix_racers": 2, "matrix_codes": 1}


def pepper_or_demo(pepper: str | None = None) -> str:
    """``pepper``, else ``HARNESS_AT_REST_PEPPER``, else the fixed demo pepper."""
    return pepper or os.environ.get("HARNESS_AT_REST_PEPPER") or DEMO_PEPPER


# -- tables ------------------------------------------------------------------------


def shorten(value: Any, n: int = SHORT) -> Any:
    """A 64-hex digest as its first ``n`` digits and an ellipsis; anything else unchanged."""
    if isinstance(value, str) and _DIGEST.fullmatch(value):
        return value[:n] + "…"
    return value


def shorten_digests(frame: pd.DataFrame, n: int = SHORT) -> pd.DataFrame:
    """A copy of ``frame`` with every digest cell shortened."""
    out = frame.copy()
    for column in out.columns:
        if not pd.api.types.is_numeric_dtype(out[column]):
            # Built by hand: Series.map would turn None into NaN.
            out[column] = pd.Series([shorten(v, n) for v in out[column]], index=out.index, dtype=object)
    return out


def configure_display() -> None:
    """Tables show whole values (digests are already short; a cut value could not be sanitised)."""
    pd.set_option("display.max_colwidth", None)
    pd.set_option("display.width", 160)
    pd.set_option("display.max_columns", 20)


AUTH_CODE_COLUMNS = ("code", "client_id", "redirect_uri", "expires_at", "used_at",
                     "code_challenge_method", "refresh_token_id")
REFRESH_TOKEN_COLUMNS = ("token_id", "family_id", "client_id", "expires_at", "consumed_at")


def _select(db: Database, table: str, columns: Sequence[str], order: str,
            clients: Iterable[str] | None) -> pd.DataFrame:
    sql = f"SELECT {', '.join(columns)} FROM {table}"
    params: list[Any] = []
    if clients is not None:
        sql += " WHERE client_id = ANY(%s)"
        params.append(list(clients))
    sql += f" ORDER BY {order}"
    with db.connect() as conn:
        rows = conn.execute(sql.encode(), params).fetchall()
    # Timestamps as text: the same rendering in every pandas version and time zone.
    rows = [tuple(v.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if isinstance(v, datetime) else v
                  for v in row) for row in rows]
    frame = pd.DataFrame(rows, columns=list(columns), dtype=object)
    return shorten_digests(frame)


def auth_codes(db: Database, clients: Iterable[str] | None = None,
               columns: Sequence[str] = AUTH_CODE_COLUMNS) -> pd.DataFrame:
    """``oauth_auth_codes`` as the database holds it (digests shortened), oldest first."""
    return _select(db, "oauth_auth_codes", columns, "created_at, code", clients)


def refresh_tokens(db: Database, clients: Iterable[str] | None = None,
                   columns: Sequence[str] = REFRESH_TOKEN_COLUMNS) -> pd.DataFrame:
    """``oauth_refresh_tokens`` as the database holds it (digests shortened), oldest first."""
    # Tokens issued in the same instant: the consumed one is the older link of the chain.
    return _select(db, "oauth_refresh_tokens", columns,
                   "created_at, consumed_at IS NULL, consumed_at, token_id", clients)


# -- parameters --------------------------------------------------------------------


def check_parameters(**values: Any) -> None:
    """Refuse (``SetupError``) a notebook parameter below its minimum (``PARAMETER_MINIMUMS``).

    ``harness notebook`` applies the same rules before it starts papermill, so
    ``-p racers=0`` is a usage error (exit 2), not a failed property.
    """
    for name, value in values.items():
        least = PARAMETER_MINIMUMS.get(name)
        if least is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise SetupError(f"parameter {name} must be a whole number >= {least}, got {value!r}")


# -- the rows of a run -------------------------------------------------------------


def remove_on_exit(scope: RunScope) -> RunScope:
    """Remove ``scope``'s rows when the kernel exits before the notebook's last cell does.

    A failed cell under papermill, a kernel shut down or restarted: the
    interpreter exits and this hook deletes the run's rows (``RunScope.cleanup``,
    idempotent, so the last cell's own cleanup is not repeated). It is
    registered after ``harness.connect``'s hook, so it runs before that one
    stops an embedded server. Returns ``scope``.
    """
    def cleanup() -> None:
        try:
            scope.cleanup()
        except Exception as exc:  # the database may be gone on the way out; say so and go on
            print(f"could not remove the rows of run {scope.run_id}: {type(exc).__name__}", file=sys.stderr)

    atexit.register(cleanup)
    return scope


#: Where each table names the run that wrote a row.
RUN_COLUMNS = {"oauth_clients": ("client_id",), "users": ("id",),
               "oauth_auth_codes": ("client_id", "user_id"),
               "oauth_refresh_tokens": ("client_id", "user_id")}


def rows_of_run(db: Database, scope: RunScope) -> pd.DataFrame:
    """How many rows of each table carry ``scope``'s prefix (``cc-<run id>-``): all zeros after cleanup."""
    counts = {}
    with db.connect() as conn:
        for table, columns in RUN_COLUMNS.items():
            where = " OR ".join(f"starts_with({c}, %s)" for c in columns)
            row = conn.execute(f"SELECT count(*) FROM {table} WHERE {where}".encode(),
                               [scope.prefix] * len(columns)).fetchone()
            counts[table] = int(row[0]) if row else 0
    return pd.DataFrame({"rows of this run": counts}).rename_axis("table")


# -- at rest -----------------------------------------------------------------------


def independent_digest(value: str, pepper: str) -> str:
    """HMAC-SHA-256 by the standard library alone: a second implementation to check the port against."""
    return hmac.new(pepper.encode(), value.encode(), hashlib.sha256).hexdigest()


def unkeyed_digest(value: str) -> str:
    """Plain SHA-256: what a digest without a pepper would be (a lookup table for guessable values)."""
    return hashlib.sha256(value.encode()).hexdigest()


def is_digest(value: object) -> bool:
    """Whether ``value`` looks like ``hash_at_rest`` output (64 lowercase hex digits)."""
    return isinstance(value, str) and _DIGEST.fullmatch(value) is not None


def text_columns(db: Database) -> list[tuple[str, str]]:
    """(table, column) of every text-like column of the public schema."""
    with db.connect() as conn:
        return [(r[0], r[1]) for r in conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'public' AND data_type IN ('text', 'character varying', 'ARRAY') "
            "ORDER BY table_name, ordinal_position")]


def find_raw_secrets(db: Database, secrets: Mapping[str, str]) -> pd.DataFrame:
    """Where any raw secret appears in the database, as a substring of any text column of any table.

    ``secrets`` maps a label ("code", "refresh token", …) to its raw value;
    the result has one row per (table, column) and a count per label, so an
    all-zero table is the evidence that nothing raw is stored.
    """
    rows = []
    with db.connect() as conn:
        for table, column in text_columns(db):
            row: dict[str, Any] = {"table": table, "column": column}
            for label, raw in secrets.items():
                found = conn.execute(
                    f'SELECT count(*) FROM "{table}" WHERE position(%s IN "{column}"::text) > 0'.encode(),
                    (raw,)).fetchone()
                row[label] = int(found[0]) if found else 0
            rows.append(row)
    return pd.DataFrame(rows).set_index(["table", "column"])


def log_table(events: Iterable[Any]) -> pd.DataFrame:
    """Captured warning events (``harness.logs.capture``) as the lines a log collector would store.

    Digests are shortened; anything else is shown as emitted, so a raw secret
    in a log line is visible here: that is the finding.
    """
    rows = [{"level": e.level, "message": e.message,
             "fields": " ".join(f"{k}={shorten(v)}" for k, v in e.fields.items())} for e in events]
    return pd.DataFrame(rows, columns=["level", "message", "fields"])


# -- Hermitage-style steps ---------------------------------------------------------


def outcome(call: Callable[[], Any]) -> str:
    """``ok`` or ``<error kind>: <public message>`` for one call: what the caller observes.

    Anything else a target raises (or a step that cannot run because an
    earlier one failed) is observed as ``error: <type>`` rather than stopping
    the walk, so the table shows every step and the first wrong one.
    """
    try:
        call()
    except OAuthError as exc:
        return f"{exc.kind}: {exc}"
    except Exception as exc:  # a target under review may raise anything; the step records it
        return f"error: {type(exc).__name__}"
    return "ok"


@dataclass
class Walk:
    """A scenario walked one step at a time: each step states what it expects and records what it saw."""

    title: str
    steps: list[dict[str, Any]] = field(default_factory=list)
    _shown: int = field(default=0, repr=False)

    def step(self, action: str, expected: str, call: Callable[[], Any]) -> str:
        """Run ``call``; record whether its observed outcome starts with ``expected``."""
        observed = outcome(call)
        self.steps.append({"step": len(self.steps) + 1, "action": action, "expected": expected,
                           "observed": observed, "as expected": observed.startswith(expected)})
        return observed

    def note(self, action: str, expected: Any, observed: Any) -> bool:
        """Record a fact read from the database (a count, a state) against what was expected."""
        ok = bool(expected == observed)
        self.steps.append({"step": len(self.steps) + 1, "action": action, "expected": str(expected),
                           "observed": str(observed), "as expected": ok})
        return ok

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.steps, columns=["step", "action", "expected", "observed",
                                                 "as expected"]).set_index("step")

    @property
    def as_expected(self) -> bool:
        return bool(self.steps) and all(s["as expected"] for s in self.steps)

    def show(self) -> None:
        """Display the steps not shown yet, then fail (``AssertionError``) if any step was not as expected."""
        from IPython.display import display

        display(self.table().iloc[self._shown:])  # type: ignore[no-untyped-call]
        self._shown = len(self.steps)
        wrong = [s for s in self.steps if not s["as expected"]]
        if wrong or not self.steps:
            raise AssertionError(
                f"{self.title}: " + "; ".join(
                    f"step {s['step']} ({s['action']}): expected {s['expected']}, observed {s['observed']}"
                    for s in wrong) if wrong else f"{self.title}: no steps")


# -- races -------------------------------------------------------------------------


def winners_still_linked(db: Database, pepper: str, seed: str, codes: int) -> int:
    """How many codes of race ``seed`` still link the refresh token their winner got.

    On a target that revokes the family on a replay, a loser that lands after
    the winner's link revokes the winner's tokens (the link becomes NULL); one
    that lands before the link revokes nothing. The count shows which way each
    code went.
    """
    from harness.race import race_code

    digests = [hash_at_rest(race_code(seed, i), pepper) for i in range(codes)]
    with db.connect() as conn:
        row = conn.execute("SELECT count(*) FROM oauth_auth_codes WHERE code = ANY(%s) "
                           "AND refresh_token_id IS NOT NULL", (digests,)).fetchone()
    return int(row[0]) if row else 0


def outcome_counts(history: History) -> pd.DataFrame:
    """How the attempts of a history ended: one row per (outcome, reason) with its count."""
    ops = history.operations()
    ops["error"] = ops["error"].fillna("")
    return (ops.groupby(["outcome", "error"]).size().rename("attempts").reset_index()
            .sort_values(["outcome", "error"]).set_index(["outcome", "error"]))


def claim_window(ops: pd.DataFrame) -> tuple[int, int]:
    """(first start, first completion) of one code's attempts, ns: what started inside it contended."""
    return int(ops["start_ns"].min()), int(ops["end_ns"].min())


def _legend_handles() -> list[Patch]:
    return ([Patch(color=c, label=o) for o, c in OUTCOME_COLOURS.items()]
            + [Patch(color="#fff59d", label="claim window (first start → first reply)")])


def plot_timeline(history: History, code: int = 0, ax: Axes | None = None,
                  title: str | None = None, legend: bool = True) -> Axes:
    """One lane per racer for code ``code``: its attempt as a bar, coloured by outcome; the winner marked.

    Times are microseconds from the first racer's start. The shaded span is
    the claim window: from the first start to the first reply, every attempt
    that began inside it was in flight at the same time as the others.
    """
    ops = history.operations()
    ops = ops[ops["code"] == code]
    if "attempt" in ops.columns:
        ops = ops[ops["attempt"].fillna(0) == 0]  # the barrier-released attempts, not 40001 retries
    ops = ops.sort_values("process")
    if ax is None:
        ax = Figure(figsize=(8, 4), layout="constrained").add_subplot()
    if ops.empty:
        ax.set_title(f"code {code}: no attempts")
        return ax
    origin, first_end = claim_window(ops)
    ax.axvspan(0, (first_end - origin) / 1000, color="#fff59d", alpha=0.7, zorder=0)
    for lane, (_, op) in enumerate(ops.iterrows()):
        start = (op["start_ns"] - origin) / 1000
        width = max((op["end_ns"] - op["start_ns"]) / 1000, 1.0)
        colour = OUTCOME_COLOURS.get(str(op["outcome"]), "#000000")
        ax.barh(lane, width, left=start, color=colour, height=0.6, zorder=2)
        if op["outcome"] == "ok":
            ax.annotate("winner", (start + width, lane), xytext=(4, 0), textcoords="offset points",
                        va="center", fontsize=8, fontweight="bold", color=colour)
    ax.set_yticks(range(len(ops)), [f"racer {p}" for p in ops["process"]])
    ax.invert_yaxis()
    ax.set_xlabel("µs since the first racer started")
    ax.margins(x=0.15)
    ax.set_title(title or f"code {code}")
    if legend:
        ax.legend(handles=_legend_handles(), loc="lower right", fontsize=7)
    return ax


def timelines(histories: Mapping[str, History], code: int = 0) -> Figure:
    """Side by side, one timeline per labelled history (e.g. ``{"faithful": …, "naive": …}``)."""
    fig = Figure(figsize=(5 * len(histories), 3.8), layout="constrained")
    axes = fig.subplots(1, len(histories), squeeze=False)[0]
    for ax, (label, history) in zip(axes, histories.items(), strict=True):
        plot_timeline(history, code, ax=ax, title=f"{label}: code {code}", legend=False)
    fig.legend(handles=_legend_handles(), loc="outside lower center", ncols=4, fontsize=8)
    return fig


def race_summary(reports: Mapping[str, Any]) -> pd.DataFrame:
    """One row per target: the single-winner counts and whether the racers overlapped.

    ``reports`` maps a label to a ``RaceReport`` (anything with ``winners``
    and ``overlap`` results).
    """
    rows = []
    for label, report in reports.items():
        w, o = report.winners.summary, report.overlap.summary
        rows.append({"target": label, "codes": w["keys"], "attempts": w["attempts"],
                     "wins": w["wins"], "double wins": w["double_wins"],
                     "codes with no winner": w["no_winner"], "indeterminate": w["indeterminate"],
                     "codes raced": o["keys_raced"],
                     "single winner": "holds" if report.winners.valid else "VIOLATED"})
    return pd.DataFrame(rows).set_index("target")


def double_wins_chart(counts: Mapping[str, int], codes: int | None = None) -> Figure:
    """Bars of double-won codes per target or matrix cell: the negative control should stand alone."""
    labels = list(counts)
    values = [int(counts[k]) for k in labels]
    fig = Figure(figsize=(7, 0.4 * len(labels) + 1.2), layout="constrained")
    ax = fig.add_subplot()
    bars = ax.barh(labels, values, color=["#c62828" if v else "#2e7d32" for v in values])
    ax.bar_label(bars, fmt="%d", padding=3)
    ax.invert_yaxis()
    ax.set_xlabel("codes won more than once" + (f" (of {codes})" if codes else ""))
    if codes:
        ax.set_xlim(0, codes * 1.1)
        ax.axvline(codes, color="#757575", linestyle=":", linewidth=1)
    ax.set_title("double wins (0 = the single-winner invariant held)")
    return fig


def matrix_table(matrix: pd.DataFrame, value: str = "double_wins", *,
                 rows: str = "strategy", columns: str = "isolation") -> pd.DataFrame:
    """The isolation matrix as strategies × isolation levels for one measure."""
    return matrix.pivot_table(index=rows, columns=columns, values=value, aggfunc="sum")


def matrix_heatmap(matrix: pd.DataFrame, value: str = "double_wins", **kwargs: Any) -> Any:
    """``matrix_table`` coloured (white = 0, red = many): a pandas ``Styler`` with a fixed id."""
    table = matrix_table(matrix, value, **kwargs)
    return (table.style.set_uuid(f"matrix_{value}")
            .background_gradient(cmap="Reds", vmin=0, axis=None)
            .format("{:.0f}")
            .set_caption(value.replace("_", " ")))


def matrix_figure(matrix: pd.DataFrame,
                  values: Sequence[str] = ("double_wins", "serialization_per_code")) -> Figure:
    """The isolation matrix as heatmaps, strategies × isolation levels, one per measure, cells annotated."""
    fig = Figure(figsize=(5.2 * len(values), 3.2), layout="constrained")
    axes = fig.subplots(1, len(values), squeeze=False)[0]
    for ax, value in zip(axes, values, strict=True):
        table = matrix_table(matrix, value)
        data = table.to_numpy(dtype=float)
        ax.imshow(data, cmap="Reds", vmin=0, vmax=max(float(data.max()), 1.0), aspect="auto")
        ax.set_xticks(range(len(table.columns)), [str(c).replace("_", " ") for c in table.columns])
        ax.set_yticks(range(len(table.index)), [str(i).replace("_", " ") for i in table.index])
        for row in range(data.shape[0]):
            for col in range(data.shape[1]):
                number = float(data[row, col])
                ax.text(col, row, f"{number:g}", ha="center", va="center", fontsize=10,
                        color="white" if number > data.max() / 2 and number > 0 else "black")
        ax.set_title(value.replace("_", " "))
    return fig


def verdict_figure(table: pd.DataFrame) -> Figure:
    """Checks × targets as a grid of coloured cells (green holds, red violated): the findings at a glance."""
    codes = {"holds": 0, "violated": 1, "not_applicable": 2, "error": 3}
    colours = [VERDICT_COLOURS[v] for v in codes]
    from matplotlib.colors import ListedColormap

    data = table.apply(lambda col: col.map(lambda v: codes.get(v, 3))).to_numpy(dtype=float)
    fig = Figure(figsize=(1.6 * len(table.columns) + 3.2, 0.26 * len(table) + 1.0), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(data, cmap=ListedColormap(colours), vmin=0, vmax=len(codes) - 1, aspect="auto")
    ax.set_xticks(range(len(table.columns)), list(table.columns))
    ax.xaxis.tick_top()
    ax.set_yticks(range(len(table.index)), list(table.index), fontsize=8)
    cells = table.to_numpy()
    for row in range(cells.shape[0]):
        for col in range(cells.shape[1]):
            ax.text(col, row, str(cells[row, col]).replace("_", " "), ha="center", va="center",
                    fontsize=7)
    return fig


def verdicts(rows: Iterable[tuple[str, bool]]) -> pd.DataFrame:
    """The closing table of a notebook: one property per row, ``holds`` or ``VIOLATED``."""
    return pd.DataFrame([{"property": p, "verdict": "holds" if ok else "VIOLATED"} for p, ok in rows]
                        ).set_index("property")


# -- the check catalogue, walked -----------------------------------------------------

#: Columns of evidence or step rows that hold measured times: left out of what a notebook shows,
#: because they differ on every run (the order of the rows already tells the story).
_TIME_COLUMN = re.compile(r"(^|_)(t|ms|us|ns|s|seconds|elapsed|duration)(_ms|_us|_ns|_s)?$")
VERDICT_COLOURS = {"holds": "#c8e6c9", "violated": "#ffcdd2", "not_applicable": "#eeeeee",
                   "error": "#ffe0b2"}


def stable_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` without its measured-time columns, digests shortened, token rows in a stable order.

    Rows of tokens created in the same instant come back from the database in
    digest order, which differs on every run; they are sorted by what they
    show instead (a stable sort over the columns that are not digests).
    """
    keep = [c for c in frame.columns if not _TIME_COLUMN.search(str(c))]
    out = frame[keep].reset_index(drop=True)
    if "token_id" in out.columns and len(out) > 1:
        plain = [c for c in out.columns
                 if not out[c].map(lambda v: is_digest(v) or _SHORT.fullmatch(str(v)) is not None).any()]
        if plain:
            out = out.sort_values(plain, kind="stable", key=lambda col: col.astype(str))
            out = out.reset_index(drop=True)
    return shorten_digests(out)


def steps_table(result: Any) -> pd.DataFrame:
    """A check's steps: action, expected, observed, and whether it was as expected (``setup`` if unjudged)."""
    rows = [{"action": s.action, "expected": s.expected, "observed": s.observed,
             "as expected": (s.ok if s.judged else "(not judged)")} for s in result.steps]
    frame = pd.DataFrame(rows, columns=["action", "expected", "observed", "as expected"])
    frame.index = pd.RangeIndex(1, len(frame) + 1, name="step")
    return frame


def _custom_evidence(result: Any) -> list[pd.DataFrame]:
    """The evidence a check added itself, one frame per run of rows with the same fields."""
    auto = {"step", "expected", "observed", "ok"}
    groups: list[list[dict[str, Any]]] = []
    for row in result.evidence:
        if set(row) <= auto:
            continue  # the judged steps again: already in the steps table
        if groups and set(groups[-1][-1]) == set(row):
            groups[-1].append(row)
        else:
            groups.append([row])
    return [stable_rows(pd.DataFrame(g)) for g in groups]


def _markdown(text: str) -> Any:
    from IPython.display import Markdown

    return Markdown(text)  # type: ignore[no-untyped-call]


def walk_check(check_id: str, db: Database, target: str, pepper: str,
               scope: RunScope | None = None) -> Any:
    """Run one check of the catalogue (as ``harness scan`` does) and show it step by step.

    Shows the check's source, severity and expected behaviour, its steps
    (expected beside observed), the rows a step read from the database, the
    evidence, and the verdict. Returns the ``CheckResult``. The check's rows
    are named under ``scope`` and left to its owner, or removed when it ends.
    """
    from IPython.display import display

    from harness.checks import run_check

    result = run_check(check_id, db, target, pepper, scope=scope)
    spec = result.spec
    show: Callable[..., None] = display
    show(_markdown(f"**`{spec.id}`** · {spec.title}  \n*{spec.source}* · severity **{spec.severity}**"
                  f"  \n**Expected:** {spec.expected}"))
    show(steps_table(result))
    shown: list[pd.DataFrame] = []
    for number, step in enumerate(result.steps, start=1):
        if step.rows is not None and len(step.rows):
            frame = stable_rows(step.rows)
            show(_markdown(f"*Step {number}, what the database (or the timeline) holds:*"))
            show(frame)
            shown.append(frame)
    evidence = [f for f in _custom_evidence(result) if not any(f.equals(s) for s in shown)]
    if evidence:
        show(_markdown("*Evidence:*"))
        for frame in evidence:
            show(frame)
    show(_markdown(f"**Verdict on `{target}`: {result.verdict}**"))
    return result


def side_by_side(db: Database, check_ids: Sequence[str], targets: Sequence[str],
                 pepper: str, scope: RunScope | None = None) -> pd.DataFrame:
    """The verdict of every check on every target (``harness scan`` per target): one column per target."""
    from harness.checks import findings_table, scan

    results = [r for t in dict.fromkeys(targets)
               for r in scan(db, t, only=check_ids, pepper=pepper, scope=scope)]
    return findings_table(results).set_index("id")


def colour_verdicts(table: pd.DataFrame) -> Any:
    """``table`` as a pandas ``Styler``: each verdict cell coloured (green holds, red violated)."""
    def colour(value: Any) -> str:
        return f"background-color: {VERDICT_COLOURS[value]}" if value in VERDICT_COLOURS else ""

    return table.style.set_uuid("verdicts").map(colour)


def shipped_targets(extra: str | None = None) -> list[str]:
    """The shipped targets in findings-table order (those this installation has), then ``extra``."""
    from harness.checks import SHIPPED_TARGETS
    from harness.targets import known_targets

    names = [t for t in SHIPPED_TARGETS if t in known_targets()]
    return [*names, extra] if extra and extra not in names else names


class CheckWalk:
    """A notebook's walk through catalogue checks on one target: ``walk("pkce.downgrade")`` shows one.

    With ``scope`` every check names its rows under the notebook's run, and the notebook's last
    cell removes them with the rest (``scope.cleanup()``).
    """

    def __init__(self, db: Database, target: str, pepper: str, scope: RunScope | None = None) -> None:
        self.db, self.target, self.pepper, self.scope = db, target, pepper, scope
        self.results: dict[str, Any] = {}

    def __call__(self, check_id: str) -> None:
        self.results[check_id] = walk_check(check_id, self.db, self.target, self.pepper, self.scope)

    @property
    def ids(self) -> list[str]:
        return list(self.results)

    def verdicts(self, must_hold: Iterable[str]) -> pd.DataFrame:
        """One row per walked check: its verdict, and whether the notebook requires it to hold.

        ``must_hold`` names the properties the seed's design promises (a
        sound implementation keeps them all); the other checks are the
        seed's known gaps, reported as findings.
        """
        required = set(must_hold)
        unknown = required - set(self.results)
        if unknown:
            raise ValueError(f"must_hold names checks this walk did not run: {sorted(unknown)}")
        rows = [{"id": r.id, "title": r.spec.title, "severity": r.spec.severity,
                 "kind": "must hold" if r.id in required else "finding if violated",
                 "verdict": r.verdict} for r in self.results.values()]
        return pd.DataFrame(rows).set_index("id")
