"""What the notebooks show: tables of the rows involved, race timelines, the isolation matrix and charts."""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import hmac
import itertools
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, cast

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


def configure_display(*, align_text_left: bool = False) -> None:
    """Tables show whole values (digests are already short; a cut value could not be sanitised).

    With ``align_text_left``, every table the kernel shows as HTML (a ``DataFrame``
    or a ``Styler``) has its text columns, text row labels and their headers
    left-aligned, numbers staying right-aligned (``left_aligned_html``). The
    plain-text form of a table is unchanged.
    """
    pd.set_option("display.max_colwidth", None)
    pd.set_option("display.width", 160)
    pd.set_option("display.max_columns", 20)
    if align_text_left:
        from IPython import get_ipython

        shell = get_ipython()
        if shell is not None:
            from pandas.io.formats.style import Styler

            html = shell.display_formatter.formatters["text/html"]
            html.for_type(pd.DataFrame, left_aligned_html)
            html.for_type(Styler, left_aligned_html)


_LEFT = "text-align: left;"
_CELL = re.compile(r"<(t[hd])\b([^>]*)>")
_ROW = re.compile(r"<tr\b[^>]*>.*?</tr>", re.S)
_CLASSES = re.compile(r'\bclass="([^"]*)"')


def _is_text(values: Any) -> bool:
    """Text, not numbers or booleans: what reads best left-aligned."""
    return not (pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values))


def _left(cell: re.Match[str]) -> str:
    """A ``<th>``/``<td>`` opening tag with ``text-align: left`` in its own ``style`` attribute."""
    tag, attrs = cell.group(1), cell.group(2)
    if "style=" in attrs:
        return cell.group(0)
    return f'<{tag} style="{_LEFT}"{attrs.rstrip()}>'


def left_aligned_html(table: Any) -> str | None:
    """The HTML of a ``DataFrame`` or ``Styler`` with text columns and text row labels left-aligned.

    Jupyter's stylesheet right-aligns every cell. The alignment is written into
    each cell's own ``style`` attribute, not a ``<style>`` block: JupyterLab
    keeps cell styles when it sanitises an untrusted notebook's outputs (a
    notebook opened from a checkout) and drops ``<style>`` blocks. A ``DataFrame``
    keeps pandas' own HTML and number formatting; a ``Styler`` its fixed uuid.
    A table with hierarchical columns, or more columns than are shown, keeps
    its HTML as it is (an IPython formatter that returned nothing would show
    no HTML at all).
    """
    from pandas.io.formats.style import Styler

    styler = table if isinstance(table, Styler) else None
    frame: Any = styler.data if styler is not None else table  # type: ignore[attr-defined]
    limit = pd.get_option("display.max_columns")
    if not isinstance(frame, pd.DataFrame) or frame.columns.nlevels != 1 or (
            styler is None and limit and frame.shape[1] > limit):
        default: str | None = cast(Any, table)._repr_html_()
        return default
    text_columns = [_is_text(frame.iloc[:, i]) for i in range(frame.shape[1])]
    text_index = all(_is_text(frame.index.get_level_values(i)) for i in range(frame.index.nlevels))
    if styler is not None:
        def by_class(cell: re.Match[str]) -> str:
            found = _CLASSES.search(cell.group(2))
            classes = found.group(1).split() if found else []
            column = next((int(c[3:]) for c in classes if c.startswith("col") and c[3:].isdigit()), None)
            if "row_heading" in classes or "index_name" in classes:
                return _left(cell) if text_index else cell.group(0)
            if ("data" in classes or "col_heading" in classes) and column is not None \
                    and column < len(text_columns) and text_columns[column]:
                return _left(cell)
            return cell.group(0)

        return _CELL.sub(by_class, styler.to_html())

    html: str | None = cast(Any, frame)._repr_html_()  # pandas' own notebook HTML
    if html is None:
        return None
    head, tbody, body = html.partition("<tbody>")
    levels = frame.index.nlevels

    def header_row(number: int, row: str) -> str:
        position = itertools.count()

        def cell(match: re.Match[str]) -> str:
            at = next(position)
            if number == 0 and at >= levels:  # the column labels, after one blank per index level
                column = at - levels
                return _left(match) if column < len(text_columns) and text_columns[column] else match.group(0)
            if number == 1 and at < levels and text_index:  # the index names
                return _left(match)
            return match.group(0)

        return _CELL.sub(cell, row)

    def body_row(row: str) -> str:
        column = itertools.count()

        def cell(match: re.Match[str]) -> str:
            if match.group(1) == "th":
                return _left(match) if text_index else match.group(0)
            at = next(column)
            return _left(match) if at < len(text_columns) and text_columns[at] else match.group(0)

        return _CELL.sub(cell, row)

    rows = itertools.count()
    head = _ROW.sub(lambda m: header_row(next(rows), m.group(0)), head)
    body = _ROW.sub(lambda m: body_row(m.group(0)), body)
    return head + tbody + body


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


@dataclass(frozen=True)
class Chart:
    """A figure and its alt text: shown as a PNG whose ``<img>`` carries the text as ``alt``.

    JupyterLab (4.x) renders an ``image/png`` output as an ``<img>`` without
    ``alt``: it ignores the ``alt`` metadata ``IPython.display.Image`` writes.
    So the figure is also offered as ``text/html``,
    ``<img src="data:image/png;base64,…" alt="…"/>``, which JupyterLab and
    nbconvert's HTML export choose over the PNG (its sanitiser keeps both
    attributes in an untrusted notebook). ``image/png``, with ``alt`` in its
    metadata, stays for what takes no HTML (PDF and LaTeX exports), and
    ``text/plain`` is the alt text itself: what a text-only view shows instead
    of ``<Figure size … with 2 Axes>``.
    """

    figure: Figure
    alt: str

    def png(self) -> bytes:
        """The figure as PNG, as the inline backend renders it (tight bounding box, the figure's dpi)."""
        import io

        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", bbox_inches="tight")
        return buffer.getvalue()

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None
                          ) -> tuple[dict[str, str], dict[str, Any]]:
        import base64
        import html

        data = base64.b64encode(self.png()).decode("ascii")
        alt = html.escape(self.alt, quote=True)
        return ({"text/html": f'<img src="data:image/png;base64,{data}" alt="{alt}"/>',
                 "image/png": data, "text/plain": self.alt},
                {"image/png": {"alt": self.alt}})

    def __repr__(self) -> str:
        return self.alt


def _timeline_ops(history: History, code: int) -> pd.DataFrame:
    """The barrier-released attempts on code ``code`` (not 40001 retries), in racer order."""
    ops = history.operations()
    if ops.empty or "code" not in ops.columns:
        return ops
    ops = ops[ops["code"] == code]
    if "attempt" in ops.columns:
        ops = ops[ops["attempt"].fillna(0) == 0]
    return ops.sort_values("process")


def _racers(processes: Iterable[Any]) -> str:
    names = [str(p) for p in processes]
    return ("racer " if len(names) == 1 else "racers ") + ", ".join(names)


def _timeline_text(label: str, ops: pd.DataFrame, code: int) -> str:
    """One panel of ``timelines`` in words: who won, how many were refused, how long the claim window was."""
    if ops.empty:
        return f"{label}, code {code}: no attempts"
    origin, first_end = claim_window(ops)
    won = ops[ops["outcome"] == "ok"]
    refused, unknown = int((ops["outcome"] == "fail").sum()), int((ops["outcome"] == "info").sum())
    winners = (f"{len(won)} winner{'s' if len(won) != 1 else ''}"
               + (f" ({_racers(won['process'])})" if len(won) else ""))
    last = round(float(ops["end_ns"].max() - origin) / 1000)
    return (f"{label}, code {code}: {len(ops)} racers; {winners}, {refused} refused"
            + (f", {unknown} unknown" if unknown else "")
            + f"; claim window 0 to {round((first_end - origin) / 1000):,} µs; last reply at {last:,} µs")


def code_to_show(report: Any) -> tuple[int, str]:
    """Which code of a race to draw, and why: the one won most often (ties: the lowest), else the middle one.

    ``report`` is a ``RaceReport``; on the naive control this is the code
    whose double win is the most visible.
    """
    double = [(int(r["wins"]), -int(r["code"])) for r in report.winners.evidence
              if r.get("problem") == "won more than once"]
    if double:
        wins, code = max(double)
        return -code, (f"the code the {report.stats.get('target', 'control')} race won most often "
                       f"({wins} winners; the lowest such code on a tie)")
    codes = int(report.winners.summary.get("keys") or 1)
    return codes // 2, "the middle code (no code was won more than once)"


def timelines(histories: Mapping[str, History], code: int = 0) -> Chart:
    """Side by side on one µs scale, one timeline of code ``code`` per labelled history.

    ``histories`` maps a label to a race's history (e.g. ``{"faithful": …,
    "naive": …}``). The panels share their x axis, so bars of the same length
    are the same time in each. The alt text says, per panel, who won, how many
    were refused and how long the claim window lasted.
    """
    fig = Figure(figsize=(5 * len(histories), 4.1), layout="constrained")
    axes = fig.subplots(1, len(histories), squeeze=False, sharex=True)[0]
    panels = []
    for ax, (label, history) in zip(axes, histories.items(), strict=True):
        ops = _timeline_ops(history, code)
        won = int((ops["outcome"] == "ok").sum()) if not ops.empty else 0
        plot_timeline(history, code, ax=ax, legend=False,
                      title=f"{label}: code {code}, {won} winner{'s' if won != 1 else ''}")
        panels.append(_timeline_text(label, ops, code))
    fig.suptitle(f"Code {code} of each race, one lane per racer, on the same µs scale")
    fig.legend(handles=_legend_handles(), loc="outside lower center", ncols=4, fontsize=8)
    alt = (f"Race timelines of code {code}, {len(panels)} panels side by side sharing one x axis "
           "(µs since the first racer started), one horizontal bar per racer from its request to its "
           "reply, green for a win, grey for a refusal, orange for an unknown outcome. "
           + ". ".join(panels) + ".")
    return Chart(fig, alt)


def race_summary(reports: Mapping[str, Any]) -> pd.DataFrame:
    """One row per target: the single-winner counts, whether the racers overlapped, and how fast.

    ``reports`` maps a label to a ``RaceReport`` (anything with ``winners``
    and ``overlap`` results and ``stats``). The median start spread is in whole
    µs, throughput in whole attempts per second.
    """
    rows = []
    for label, report in reports.items():
        w, o = report.winners.summary, report.overlap.summary
        spread = o.get("median_spread_us")
        rows.append({"target": label, "codes": w["keys"], "attempts": w["attempts"],
                     "wins": w["wins"], "double wins": w["double_wins"],
                     "codes with no winner": w["no_winner"], "indeterminate": w["indeterminate"],
                     "codes raced": o["keys_raced"],
                     "single winner": "holds" if report.winners.valid else "VIOLATED",
                     "median start spread (µs)": None if spread is None else round(spread),
                     "attempts/s": round(report.stats["attempts_per_s"])})
    return pd.DataFrame(rows).set_index("target")


def double_wins_chart(counts: Mapping[str, int], codes: int | None = None) -> Chart:
    """Bars of double-won codes per target or matrix cell: the negative control should stand alone.

    The alt text names every bar above 0 and counts the others.
    """
    from matplotlib.ticker import MaxNLocator

    labels = list(counts)
    values = [int(counts[k]) for k in labels]
    fig = Figure(figsize=(7, 0.4 * len(labels) + 1.2), layout="constrained")
    ax = fig.add_subplot()
    bars = ax.barh(labels, values, color=["#c62828" if v else "#2e7d32" for v in values])
    ax.bar_label(bars, fmt="%d", padding=3)
    ax.invert_yaxis()
    of = f" (of {codes})" if codes else ""
    ax.set_xlabel("codes won more than once" + of)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if codes:
        ax.set_xlim(0, codes * 1.1)
        ax.axvline(codes, color="#757575", linestyle=":", linewidth=1)
    ax.set_title("Codes won more than once (0 = the single-winner invariant held)")
    above = [f"{k} {v}" for k, v in zip(labels, values, strict=True) if v]
    zero = len(values) - len(above)
    alt = (f"Horizontal bar chart of the codes won more than once{of}, one bar for each of {len(values)} "
           "labels. " + (f"Above 0: {'; '.join(above)}. " if above else "")
           + (f"The other {zero} are at 0." if above and zero else f"All {zero} are at 0." if zero else ""))
    return Chart(fig, alt.strip())


#: How the isolation matrix's measures are named and rounded, in its heatmaps and its tables alike.
MATRIX_MEASURES = {
    "double_wins": ("double-won codes", "{:.0f}"),
    "no_winner": ("codes without a winner", "{:.0f}"),
    "serialization_failures": ("serialization failures (SQLSTATE 40001)", "{:.0f}"),
    "serialization_per_code": ("serialization failures per code (SQLSTATE 40001 ÷ codes)", "{:.1f}"),
}


def _measure(value: str) -> tuple[str, str]:
    return MATRIX_MEASURES.get(value, (value.replace("_", " "), "{:g}"))


def matrix_table(matrix: pd.DataFrame, value: str = "double_wins", *,
                 rows: str = "strategy", columns: str = "isolation") -> pd.DataFrame:
    """The isolation matrix as strategies × isolation levels for one measure."""
    return matrix.pivot_table(index=rows, columns=columns, values=value, aggfunc="sum")


def matrix_heatmap(matrix: pd.DataFrame, value: str = "double_wins", **kwargs: Any) -> Any:
    """``matrix_table`` coloured (white = 0, red = many): a pandas ``Styler`` with a fixed id.

    Its numbers are rounded as in ``matrix_figure`` (``MATRIX_MEASURES``).
    """
    label, number = _measure(value)
    table = matrix_table(matrix, value, **kwargs)
    return (table.style.set_uuid(f"matrix_{value}")
            .background_gradient(cmap="Reds", vmin=0, axis=None)
            .format(number)
            .format_index(lambda name: str(name).replace("_", " "), axis=0)
            .format_index(lambda name: str(name).replace("_", " "), axis=1)
            .set_caption(label))


def matrix_rows(matrix: pd.DataFrame) -> pd.DataFrame:
    """The isolation matrix one cell a row, named and rounded as in its heatmaps (``MATRIX_MEASURES``)."""
    rows = pd.DataFrame({"strategy": matrix["strategy"].str.replace("_", " "),
                         "isolation": matrix["isolation"].str.replace("_", " ")})
    for value in ("double_wins", "no_winner", "serialization_failures", "serialization_per_code"):
        label, number = _measure(value)
        # Rounded by the very format the heatmaps print (str.format), not pandas' round (half to even):
        # 5.65 is 5.7 in all three, never 5.6 here.
        shown = [number.format(v) for v in matrix[value]]
        rows[label] = [float(v) if "." in v else int(v) for v in shown]
    rows["attempts/s"] = matrix["attempts_per_s"].round().astype(int)
    rows["codes raced (%)"] = (matrix["raced_fraction"] * 100).round().astype(int)
    rows["verdict"] = matrix["verdict"]
    return rows.reset_index(drop=True)


def matrix_figure(matrix: pd.DataFrame,
                  values: Sequence[str] = ("double_wins", "serialization_per_code")) -> Chart:
    """The isolation matrix as heatmaps, strategies × isolation levels, one per measure, cells annotated.

    The numbers are rounded as in ``matrix_heatmap`` and ``matrix_rows``, and
    the alt text reads every cell.
    """
    fig = Figure(figsize=(5.6 * len(values), 3.5), layout="constrained")
    axes = fig.subplots(1, len(values), squeeze=False)[0]
    described = []
    for ax, value in zip(axes, values, strict=True):
        label, number = _measure(value)
        table = matrix_table(matrix, value)
        data = table.to_numpy(dtype=float)
        ax.imshow(data, cmap="Reds", vmin=0, vmax=max(float(data.max()), 1.0), aspect="auto")
        columns = [str(c).replace("_", " ") for c in table.columns]
        index = [str(i).replace("_", " ") for i in table.index]
        ax.set_xticks(range(len(columns)), columns)
        ax.set_yticks(range(len(index)), index)
        for row in range(data.shape[0]):
            for col in range(data.shape[1]):
                cell = float(data[row, col])
                ax.text(col, row, number.format(cell), ha="center", va="center", fontsize=10,
                        color="white" if cell > data.max() / 2 and cell > 0 else "black")
        ax.set_title(label, fontsize=10)
        described.append(f"{label}: " + "; ".join(
            f"{index[r]} " + ", ".join(f"{number.format(float(data[r, c]))} at {columns[c]}"
                                       for c in range(len(columns)))
            for r in range(len(index))))
    fig.suptitle("The isolation matrix: claim strategy (rows) × isolation level (columns)")
    alt = (f"{len(values)} heatmaps of the isolation matrix, claim strategies as rows and isolation levels "
           "as columns, darker red for more. " + ". ".join(described) + ".")
    return Chart(fig, alt)


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


# -- your own server: endpoint descriptions, harness serve, the black box -------------------

#: The repository (this file is harness/walkthrough.py): examples/ and notebooks/ are there.
REPOSITORY = Path(__file__).resolve().parents[1]
#: The description of ``harness serve`` that ships with the harness.
SHIPPED_DESCRIPTION = REPOSITORY / "examples" / "endpoints" / "harness-serve.toml"
#: Where the shipped description's ``${CLAIMCHECK_SERVER:-…}`` finds a running ``harness serve``.
SERVER_ENV = "CLAIMCHECK_SERVER"
#: The secret of ``harness serve``'s confidential test clients (the shipped description's ``secret_env``).
CLIENT_SECRET_ENV = "CLAIMCHECK_CLIENT_SECRET"
#: ``harness serve`` names the test clients and user it registers with this prefix.
SERVED_PREFIX = "claimcheck-"
#: How long a ``harness serve`` started by a notebook may take to answer ``/healthz`` (a loaded machine).
SERVE_READY_TIMEOUT_S = 60.0

#: Checks whose black-box variant judges less than the in-process one, so that over HTTP they may
#: hold where the in-process check is violated; and why.
NARROWER_OVER_HTTP = {
    "code.single-use": "over HTTP only the sequential replay is judged: a second exchange forced "
                       "inside the first one's claim needs step hooks (the race covers the "
                       "concurrent case)",
    "refresh.grace-policy": "over HTTP the reuse policy the server runs is judged (strict on every "
                            "shipped target); a grace window cannot be switched on from outside",
}

#: What each capability gives a check, and why a server reached over HTTP lacks it (or how it offers it).
CAPABILITY_NOTES = {
    "store": ("put a code of its own choosing into the target",
              "codes come only from the authorization endpoint"),
    "rows": ("read the rows the target wrote, to show and judge them",
             "the server's database is its own"),
    "digest": ("the target's at-rest digest: find a row by its raw value",
               "the pepper is the server's secret"),
    "step_hooks": ("pause a grant between two of its steps, to force an interleaving",
                   "a request cannot be paused from outside (the race finds interleavings by "
                   "overlap, measured)"),
    "clock": ("move the target's time without waiting",
              "the server's clock runs on its own: an expiry would take its real lifetime"),
    "in_process": ("capture the target's log lines, trace which of its functions ran",
                   "its logs and its code stay on the server"),
    "options": ("build the target again with other settings (a grace window, another pepper)",
                "the server runs as it is deployed"),
    "repository": ("call the repository's lower methods directly",
                   "only the protocol is exposed"),
    "introspect": ("ask whether an access token still works",
                   "offered when the description has introspection_url (RFC 7662) or "
                   "resource_url (RFC 6750)"),
}

#: How each ``auth`` of a description's client authenticates (RFC 6749 §2.3.1).
AUTH_MEANINGS = {
    "client_secret_basic": "client id and secret in HTTP Basic (RFC 6749 §2.3.1)",
    "client_secret_post": "client_id and client_secret in the form body (RFC 6749 §2.3.1)",
    "none": "a public client: client_id only (RFC 6749 §2.1); PKCE protects its codes",
}

#: The top-level fields of a description, in the order they are explained, with what each means.
DESCRIPTION_FIELDS = (
    ("name", "how reports name the server"),
    ("token_url", "the token endpoint (RFC 6749 §3.2): codes are redeemed (§4.1.3) and tokens "
                  "refreshed (§6) here"),
    ("introspection_url", "optional: RFC 7662 introspection, called with the first confidential "
                          "client's credentials: does an access token still work? (capability "
                          "introspect)"),
    ("resource_url", "optional: a bearer-protected resource (RFC 6750) probed instead of "
                     "introspection: HTTP 200 means the token works"),
    ("concurrency", "how many requests the server really runs in parallel (processes × threads), "
                    "as you declare it: a race at 1 proves nothing (inconclusive)"),
    ("timeout_s", "seconds per request to the token endpoint"),
    ("codes.authorize_url", "the authorization endpoint (RFC 6749 §4.1.1): the harness sends "
                            "response_type=code, client_id, redirect_uri, scope, state and its own "
                            "PKCE pair (RFC 7636), follows redirects to the client's redirect_uri "
                            "and checks state"),
    ("codes.login", "optional: how the test user logs in and consents first: a form (url, fields) "
                    "or a function package.module:function given the harness's httpx.Client"),
    ("codes.params", "optional: extra query parameters for the authorization request"),
    ("codes.timeout_s", "seconds per request to the authorization endpoint"),
    ("database_url_env", "optional: the environment variable holding a read-only URL of the "
                         "server's database (for token_count_sql)"),
    ("token_count_sql", "optional: one read-only SELECT counting the tokens the server committed; "
                        "a race compares it with the tokens it handed out"),
)

_REFERENCE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")
_SECRET_KEY = re.compile(r"secret|password|passwd|passphrase|credential|api[_-]?key|private[_-]?key",
                         re.IGNORECASE)
_KEY_VALUE = re.compile(r"""(?P<key>[A-Za-z0-9_-]+)(?P<eq>\s*=\s*)(?P<q>["'])(?P<value>.*?)(?P=q)""")


def resolve_description(target: str) -> Path:
    """The endpoint description ``target`` names.

    An absolute path as it is; a relative one is looked for from the working
    directory, then from the shell's (``PWD``: ``harness notebook`` runs its
    kernels in notebooks/, the reviewer named the file from where they stand),
    then from the repository (where ``examples/endpoints/…`` are).
    """
    path = Path(target).expanduser()
    if path.is_absolute():
        if not path.is_file():
            raise SetupError(f"no endpoint description at {path}")
        return path
    bases = [Path.cwd(), *([Path(os.environ["PWD"])] if os.environ.get("PWD") else []), REPOSITORY]
    for base in bases:
        if (base / path).is_file():
            return (base / path).resolve()
    raise SetupError(f"no endpoint description {target!r} in {', '.join(dict.fromkeys(map(str, bases)))}")


def is_shipped_description(path: Path) -> bool:
    """Whether ``path`` is the shipped description of ``harness serve``."""
    return path.resolve() == SHIPPED_DESCRIPTION.resolve()


def shown_path(path: Path) -> str:
    """``path`` relative to the repository when it is inside (the same on every machine), else as it is."""
    try:
        return path.resolve().relative_to(REPOSITORY).as_posix()
    except ValueError:
        return str(path)


def black_box_plan(target: str | None, server_target: str) -> tuple[Path, str | None]:
    """What a black-box notebook tests: (endpoint description, what ``harness serve`` must serve, or None).

    ``target`` is an endpoint description (``*.toml``), ``None`` for the
    shipped one, or a target name (``naive``, ``package.module:factory``). A
    name is served here and described by the shipped description. The
    shipped description with no ``CLAIMCHECK_SERVER`` set means: serve
    ``server_target`` here. Any other description (or ``CLAIMCHECK_SERVER``
    set) is a server that already runs.
    """
    from harness.targets.endpoint import is_description

    if target is None:
        target = str(SHIPPED_DESCRIPTION)
    if not is_description(target):
        return SHIPPED_DESCRIPTION, target
    path = resolve_description(target)
    if is_shipped_description(path) and not os.environ.get(SERVER_ENV):
        return path, server_target
    return path, None


def _redact_line(line: str, *, every_value: bool) -> str:
    def sub(match: re.Match[str]) -> str:
        key, value = match.group("key"), match.group("value")
        if key.endswith("_env") or _REFERENCE.fullmatch(value):
            return match.group(0)  # the name of an environment variable, not a secret
        if every_value or _SECRET_KEY.search(key):
            return f"{key}{match.group('eq')}{match.group('q')}***{match.group('q')}"
        return match.group(0)

    return _KEY_VALUE.sub(sub, line)


def redacted_description(path: Path) -> str:
    """The description's text as written, with every secret value replaced by ``***``.

    Secret values: those of keys named like a secret (``secret``,
    ``password``, …) and every value of the login form's ``fields``; an
    environment variable's name (``secret_env``, ``${NAME}``) is kept.
    """
    lines = []
    table = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        comment = stripped.startswith("#")
        if not comment and stripped.startswith("["):
            table = stripped.strip("[]").strip()
        fields = not comment and (table == "codes.login.fields" or stripped.startswith("fields"))
        lines.append(_redact_line(line, every_value=fields))
    return "\n".join(lines)


def _shown(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "—"
    return str(value)


def description_fields(desc: Any) -> pd.DataFrame:
    """A description field by field: what the file says, what the harness uses (expanded from the
    environment), and what it means. Secrets are never shown: only whether they are set."""
    raw = tomllib.loads(Path(desc.path).read_text(encoding="utf-8"))
    codes_raw: dict[str, Any] = raw["codes"] if isinstance(raw.get("codes"), dict) else {}
    login = desc.codes.login
    used: dict[str, Any] = {
        "name": desc.name, "token_url": desc.token_url, "introspection_url": desc.introspection_url,
        "resource_url": desc.resource_url, "concurrency": desc.concurrency, "timeout_s": desc.timeout_s,
        "codes.authorize_url": desc.codes.authorize_url,
        "codes.login": (None if login is None else f"function {login.function}" if login.function
                        else f"{login.method} {login.url}, fields {', '.join(login.fields)} "
                             "(values never shown)"),
        "codes.params": desc.codes.params or None, "codes.timeout_s": desc.codes.timeout_s,
        "database_url_env": "set (never shown)" if desc.database_url else None,
        "token_count_sql": desc.token_count_sql,
    }
    rows = []
    for name, meaning in DESCRIPTION_FIELDS:
        table, key = (codes_raw, name.split(".", 1)[1]) if name.startswith("codes.") else (raw, name)
        written = table.get(key)
        if name == "codes.login" and isinstance(written, dict):
            written = "[codes.login] table (values never shown)"
        rows.append({"field": name, "in the file": _shown(written), "as used": _shown(used[name]),
                     "meaning": meaning})
    rows.append({"field": "[[clients]]", "in the file": f"{len(raw.get('clients') or [])} clients",
                 "as used": ", ".join(c.id for c in desc.clients),
                 "meaning": "the clients the harness may act as (at least two: the cross-client "
                            "checks); below"})
    return pd.DataFrame(rows).set_index("field")


def description_clients(desc: Any) -> pd.DataFrame:
    """The description's clients: how each authenticates, where its secret comes from (never the secret)."""
    raw = tomllib.loads(Path(desc.path).read_text(encoding="utf-8")).get("clients") or []
    rows = []
    for client, entry in zip(desc.clients, raw, strict=False):
        if not client.confidential:
            secret = "none (public)"
        elif isinstance(entry, dict) and "secret_env" in entry:
            secret = f"from ${entry['secret_env']}: set (never shown)"
        else:
            secret = "written in the file (prefer secret_env): never shown"
        rows.append({"id": client.id, "auth": client.auth, "how it authenticates": AUTH_MEANINGS[client.auth],
                     "redirect_uri": client.redirect_uri, "scope": client.scope, "secret": secret})
    return pd.DataFrame(rows).set_index("id")


def capability_table(over_http: Iterable[Any], in_process: Iterable[Any] | None = None,
                     label: str = "in process") -> pd.DataFrame:
    """Every capability a check may require: what it gives, whether the server over HTTP offers it
    (and why not), and, for comparison, whether the in-process target ``label`` does."""
    from harness.targets.capabilities import Capability

    http = {Capability(c) for c in over_http}
    local = None if in_process is None else {Capability(c) for c in in_process}
    rows = []
    for cap in Capability:
        gives, why = CAPABILITY_NOTES.get(cap.value, ("", ""))
        row = {"capability": cap.value, "what a check gets from it": gives,
               "over HTTP": "yes" if cap in http else "no", "why, over HTTP": why}
        if local is not None:
            row[label] = "yes" if cap in local else "no"
        rows.append(row)
    return pd.DataFrame(rows).set_index("capability")


def _reason(result: Any) -> str:
    first = result.evidence[0] if result.evidence else {}
    return str(first.get("reason", "")) if isinstance(first, dict) else ""


def scan_table(results: Sequence[Any]) -> pd.DataFrame:
    """A scan's results: id, title, severity, verdict, and why for a check that did not run."""
    rows = [{"id": r.id, "title": r.spec.title, "severity": r.spec.severity, "verdict": r.verdict,
             "why": _reason(r) if r.verdict in ("not_applicable", "error", "inconclusive") else ""}
            for r in results]
    return pd.DataFrame(rows).set_index("id")


def checks_out_of_reach(offered: Iterable[Any]) -> pd.DataFrame:
    """The catalogue's checks that require a capability ``offered`` lacks: they answer ``not_applicable``."""
    from harness.checks import CATALOGUE
    from harness.targets.capabilities import Capability, missing

    have = {Capability(c) for c in offered}
    rows = []
    for spec in CATALOGUE.values():
        lacking = missing(map(Capability, spec.requires), have)
        if lacking:
            rows.append({"id": spec.id, "title": spec.title, "severity": spec.severity,
                         "requires": ", ".join(c.value for c in Capability if c.value in spec.requires),
                         "missing": ", ".join(c.value for c in lacking)})
    return pd.DataFrame(rows, columns=["id", "title", "severity", "requires", "missing"]).set_index("id")


def names_its_capabilities(result: Any, offered: Iterable[Any]) -> bool:
    """Whether a ``not_applicable`` result says ``needs <the capabilities it lacks>``, each one named."""
    from harness.targets.capabilities import Capability, describe, missing

    lacking = missing(map(Capability, result.spec.requires), {Capability(c) for c in offered})
    return bool(lacking) and _reason(result).startswith(f"needs {describe(lacking)};")


def agreement(check_id: str, over_http: str, in_process: str) -> str:
    """How a black-box verdict compares with the in-process one of the same target."""
    if over_http == "not_applicable":
        return "not black box"
    if over_http == in_process:
        return "same"
    if check_id in NARROWER_OVER_HTTP and (over_http, in_process) == ("holds", "violated"):
        return "narrower over HTTP"
    return "DIFFERENT"


def black_box_beside_in_process(over_http: Sequence[Any], in_process: Sequence[Any]) -> pd.DataFrame:
    """Per check: its verdict over HTTP, the in-process verdict of the same target, how they compare."""
    local = {r.id: r.verdict for r in in_process}
    rows = [{"id": r.id, "over HTTP": r.verdict, "in process": local.get(r.id, "—"),
             "comparison": agreement(r.id, r.verdict, local.get(r.id, "—"))} for r in over_http]
    return pd.DataFrame(rows).set_index("id")


def race_check_outcomes(results: Mapping[str, Any]) -> pd.DataFrame:
    """The catalogue's ``race.single-winner`` result per label: its verdict and which problem it found."""
    rows = []
    for label, result in results.items():
        counts: dict[str, Any] = next((e for e in result.evidence if "winners.double_wins" in e), {})
        rows.append({"run": label, "verdict": result.verdict,
                     "some code won more than once": int(counts.get("winners.double_wins", 0)) > 0,
                     "some code won by nobody": int(counts.get("winners.no_winner", 0)) > 0,
                     "wins": "none" if counts and not counts.get("winners.wins") else "some"})
    return pd.DataFrame(rows).set_index("run")


# -- a harness serve of the notebook's own --------------------------------------------------


def _die_with_parent() -> None:  # pragma: no cover - runs in the child, between fork and exec
    """Linux: SIGTERM when the kernel dies, even by SIGKILL (``harness serve`` then removes its rows)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG


@dataclass(eq=False)
class LocalServer:
    """A ``harness serve`` this kernel started: where it listens, and how to stop it (``stop()``).

    While it runs, ``CLAIMCHECK_SERVER`` and ``CLAIMCHECK_CLIENT_SECRET`` in
    this kernel's environment point the shipped description (and the race's
    racer processes, which inherit the environment) at it; ``stop()`` puts
    them back as they were.
    """

    target: str
    base: str
    proc: subprocess.Popen[bytes]
    #: Its stdout and stderr: a file already unlinked, so that nothing is left behind, even on SIGKILL.
    log: BinaryIO
    saved_env: dict[str, str | None] = field(default_factory=dict)
    stopped: str | None = None

    def log_lines(self) -> list[str]:
        try:
            self.log.seek(0)
            return self.log.read().decode("utf-8", "replace").splitlines()
        except (OSError, ValueError):
            return []

    def stop(self, timeout_s: float = 30.0) -> str:
        """Stop it as Ctrl-C would (it removes the rows it registered); idempotent.

        Returns its last word: ``harness serve: removed the N client(s), …``
        (or why it could not). Registered as an exit hook too, so a kernel
        that stops early stops the server first.
        """
        if self.stopped is not None:
            return self.stopped
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for name, value in self.saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        lines = [line for line in self.log_lines() if line.startswith("harness serve:")]
        self.stopped = next((line for line in reversed(lines) if "removed" in line),
                            lines[-1] if lines else "harness serve: (no output)")
        self.log.close()
        atexit.unregister(self.stop)
        return self.stopped


def serve(target: str, db: Database, pepper: str, *, timeout_s: float = SERVE_READY_TIMEOUT_S) -> LocalServer:
    """Start ``harness serve --target target --port 0`` on ``db`` and wait until ``/healthz`` answers.

    The server gets the database's URL, the pepper, and the test clients'
    secret (``CLAIMCHECK_CLIENT_SECRET`` if this kernel has one, else a fresh
    random one) through its environment. It registers its test clients and
    user (``claimcheck-…``) and removes them when it stops: in the notebook's
    last cell, by the exit hook registered here, or, should the kernel be
    killed, on the SIGTERM it then gets (Linux). A server that cannot start (a
    database that holds another server's test clients with another secret, an
    unknown target) is a ``SetupError`` with its last line.
    """
    import httpx

    given = os.environ.get(CLIENT_SECRET_ENV)
    secret = given or secrets.token_urlsafe(24)
    env = {k: v for k, v in os.environ.items() if k != SERVER_ENV}
    env.update(HARNESS_DATABASE_URL=db.url, HARNESS_AT_REST_PEPPER=pepper, **{CLIENT_SECRET_ENV: secret})
    # The server writes through one open file, this kernel reads through another (its own offset);
    # the name is gone at once, so nothing is left behind even if the kernel is killed.
    fd, name = tempfile.mkstemp(prefix="claimcheck-serve-", suffix=".log")
    try:
        log = open(name, "rb")  # noqa: SIM115 - closed by LocalServer.stop
    finally:
        os.unlink(name)
    with os.fdopen(fd, "wb") as out:
        # A session of its own: the SIGINT Jupyter sends the kernel's process group (an interrupt,
        # and the first step of every kernel shutdown) must not stop the server under the notebook.
        proc = subprocess.Popen(
            [sys.executable, "-m", "harness", "serve", "--target", target, "--host", "127.0.0.1",
             "--port", "0"], env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
    server = LocalServer(target, "", proc, log)
    atexit.register(server.stop)
    deadline = time.monotonic() + timeout_s

    def fail(why: str) -> SetupError:
        tail = [line for line in server.log_lines() if line.strip()]
        server.stop()
        return SetupError(f"harness serve --target {target} {why}" + (f": {tail[-1]}" if tail else ""))

    while not (found := re.search(r"POST (http://127\.0\.0\.1:\d+)/token", "\n".join(server.log_lines()))):
        if proc.poll() is not None:
            raise fail(f"exited with status {proc.returncode}")
        if time.monotonic() > deadline:
            raise fail(f"did not start within {timeout_s:g} s")
        time.sleep(0.05)
    server.base = found.group(1)
    while True:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{server.base}/healthz", timeout=2).status_code == 200:
                break
        if proc.poll() is not None:
            raise fail(f"exited with status {proc.returncode}")
        if time.monotonic() > deadline:
            raise fail(f"did not answer /healthz within {timeout_s:g} s")
        time.sleep(0.1)
    server.saved_env = {SERVER_ENV: os.environ.get(SERVER_ENV), CLIENT_SECRET_ENV: given}
    os.environ[SERVER_ENV] = server.base
    os.environ[CLIENT_SECRET_ENV] = secret
    return server


def served_rows(db: Database, prefix: str = SERVED_PREFIX) -> pd.DataFrame:
    """How many rows of each table belong to ``harness serve``'s test clients and user (``claimcheck-…``)."""
    counts = {}
    with db.connect() as conn:
        for table, columns in RUN_COLUMNS.items():
            where = " OR ".join(f"starts_with({c}, %s)" for c in columns)
            row = conn.execute(f"SELECT count(*) FROM {table} WHERE {where}".encode(),
                               [prefix] * len(columns)).fetchone()
            counts[table] = int(row[0]) if row else 0
    return pd.DataFrame({f"rows named {prefix}…": counts}).rename_axis("table")


# -- a race over HTTP -----------------------------------------------------------------------


def token_sets(history: History, f: str = "exchange") -> pd.DataFrame:
    """Per code: the racers, how many got tokens (``ok``), and how many *distinct* token sets those were.

    Over HTTP a win is judged by the token set it handed out (its
    fingerprint, never the token): a server that answers two racers with the
    same pair issued it once. ``wins`` is what the single-winner checker
    counts; more than one is a double win.
    """
    per: dict[Any, dict[str, Any]] = {}
    for inv, done in history.pairs():
        if inv.f != f or not isinstance(inv.value, dict) or "code" not in inv.value:
            continue
        row = per.setdefault(inv.value["code"], {"racers": 0, "ok": 0, "tokens": set()})
        row["racers"] += 1
        if done is not None and done.type == "ok":
            row["ok"] += 1
            token = done.value.get("token") if isinstance(done.value, dict) else None
            row["tokens"].add(token or f"#{inv.process}")
    rows = [{"code": code, "racers": r["racers"], "answered with tokens": r["ok"],
             "distinct token sets": len(r["tokens"]), "wins": len(r["tokens"])}
            for code, r in sorted(per.items(), key=lambda kv: int(kv[0]))]
    return pd.DataFrame(rows, columns=["code", "racers", "answered with tokens", "distinct token sets",
                                       "wins"]).set_index("code")


def race_settings(report: Any) -> pd.DataFrame:
    """What a race over HTTP was: the server, its declared concurrency, racers, codes (nothing measured)."""
    s = report.stats
    rows = {"server": s.get("server"), "description": shown_path(Path(str(s.get("target")))),
            "declared concurrency (requests in parallel)": s.get("server_concurrency"),
            "racers per code": s.get("racers"), "codes": s.get("codes"),
            "codes from": "the authorization endpoint, one just before its release, each with a "
                          "PKCE S256 pair of its own"}
    return pd.DataFrame({"value": {k: str(v) for k, v in rows.items()}}).rename_axis("setting")


def _share(part: int | None, whole: int) -> str:
    if part is None:
        return "not asked (no introspection_url or resource_url)"
    if whole == 0:
        return "nothing to ask (no code was won)"
    return "all" if part == whole else "none" if part == 0 else "some"


def after_race(report: Any) -> pd.DataFrame:
    """What the harness found after the race: each won code replayed once, each winner's tokens probed.

    As shares (all, some, none), so the table reads the same from run to run; the
    counts are in ``report.stats["after_race"]``.
    """
    a = report.stats.get("after_race") or {}
    replayed, sets = int(a.get("codes_replayed", 0)), int(a.get("winning_token_sets", 0))
    rows = [
        ("won codes replayed once after the race: refused", _share(a.get("replays_refused"), replayed),
         "RFC 6749 §4.1.2: a code is used once"),
        ("winners' access tokens still active after the replay",
         _share(a.get("access_tokens_active_after_replay"), sets),
         "RFC 6749 §4.1.2: SHOULD revoke all tokens issued on that code"),
        ("winners' refresh tokens still usable after the replay",
         _share(a.get("refresh_tokens_usable_after_replay"), sets),
         "RFC 6749 §4.1.2, RFC 9700 §4.14.2: the family is revoked"),
    ]
    return pd.DataFrame(rows, columns=["after the race", "observed", "source"]).set_index("after the race")


def race_measured(report: Any) -> pd.DataFrame:
    """The measured side of a race: overlap, counts, timings (they differ on every run)."""
    ov, w, s = report.overlap.summary, report.winners.summary, report.stats
    rows = {
        "codes with ≥ 2 attempts in flight at once": f"{ov.get('keys_raced')} of {ov.get('keys')} "
                                                     f"({float(ov.get('raced_fraction') or 0):.0%})",
        "codes with every racer in flight before the first reply": ov.get("keys_all_in_flight"),
        "most attempts in flight at once": ov.get("max_in_flight"),
        "median start spread (µs)": ov.get("median_spread_us"),
        "attempts: ok / fail / info": "{ok} / {fail} / {info}".format(**s.get("ops", {})),
        "token sets returned (distinct)": s.get("tokens_returned"),
        "token sets committed (token_count_sql)": s.get("tokens_committed"),
        "codes won more than once": w.get("double_wins"),
        "racer processes": s.get("processes"),
        "elapsed (s)": round(float(s.get("elapsed_s") or 0), 3),
        "after the race (counts)": ", ".join(f"{k} {v}" for k, v in (s.get("after_race") or {}).items()),
    }
    return pd.DataFrame({"measured": {k: str(v) for k, v in rows.items()}}).rename_axis("")


def race_timeline(report: Any, code: int | None = None) -> Figure:
    """The timeline of one code of a race: the first double-won one, else ``code`` (or the middle one)."""
    double = sorted(int(r["code"]) for r in report.winners.evidence if r["problem"] == "won more than once")
    chosen = double[0] if double and code is None else (code if code is not None
                                                         else int(report.stats.get("codes", 1)) // 2)
    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.add_subplot()
    plot_timeline(report.history, chosen, ax=ax,
                  title=f"code {chosen}" + (" (won more than once)" if chosen in double else ""))
    return fig


def race_reading(report: Any, scan_verdicts: Mapping[str, str]) -> str:
    """What a race over HTTP says about the server, in a sentence or two (Markdown), from its verdict.

    ``scan_verdicts`` (check id → verdict of the black-box scan) explains a race
    nobody won: a server that refuses a right PKCE verifier refuses every racer.
    """
    from harness.race import verdict

    w, s = report.winners.summary, report.stats
    found = verdict(report)
    codes = w.get("keys", 0)
    if found == "double win":
        return ("**Double win: codes were redeemed more than once**, each time for distinct tokens (how "
                "many is measured above). The server's claim of a code is not atomic: RFC 6749 §4.1.2 "
                "allows one use. The timeline above shows one such code.")
    if found == "no winner":
        why = ("Every racer was refused. The race redeems each code with the PKCE verifier of its "
               "S256 challenge (RFC 7636 §4.6), and this server refuses a right verifier "
               "(`pkce.right-verifier` is violated in the scan above): no exchange gets far enough to "
               "race. **The race cannot judge this server's claim**; fix PKCE first, or race the "
               "implementation in process (notebook 4), where codes are stored without PKCE."
               if scan_verdicts.get("pkce.right-verifier") == "violated" else
               "Every racer was refused: the server redeemed none of the codes it had just issued.")
        return f"**No winner: none of the {codes} codes was redeemed by anybody.** {why}"
    if found == "inconclusive":
        return (f"**Inconclusive**: the description declares concurrency {s.get('server_concurrency')}, so "
                "the server runs one request at a time and nothing raced where it matters, whatever "
                "the racers did on the wire. Declare what the server really runs (processes × threads).")
    if found == "no race":
        return ("**No race**: the racers did not overlap on enough codes (see the measured overlap), so "
                "a single winner proves nothing. Run more racers, or from a machine closer to the server.")
    if found == "incomplete":
        return "**Incomplete**: the race did not run to its end: " + "; ".join(s.get("errors") or [])
    if found == "nothing won":
        return "**Nothing won**: no attempt got an answer with tokens."
    return (f"**Pass: every one of the {codes} codes was redeemed exactly once**, with the racers measured "
            "to overlap: the server's claim held under this race.")


def description_secrets(desc: Any) -> list[str]:
    """The secret values a loaded description holds (client secrets, login fields named like one):
    what a notebook checks it never shows."""
    values = [c.secret for c in desc.clients if c.secret]
    login = desc.codes.login
    if login is not None:
        values += [v for k, v in login.fields.items() if v and _SECRET_KEY.search(k)]
    return values
