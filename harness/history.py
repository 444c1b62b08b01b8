"""Histories of operations, Jepsen style: every invoke gets exactly one ok, fail or info."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import islice
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

import psycopg

from harness.errors import IndeterminateError, InternalError, OAuthError

if TYPE_CHECKING:  # pandas costs ~0.25 s to import: racer processes never need it
    import pandas as pd

OpType = Literal["invoke", "ok", "fail", "info"]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Op:
    """One entry: ``process`` did ``f`` with ``value``; ``time`` is ``time.monotonic_ns()``.

    ``monotonic_ns`` is one clock for every process of the machine, so
    histories from several processes merge and compare. Slotted: a race of
    64 racers x 10,000 codes holds 1.28 M of them.
    """

    process: int | str
    type: OpType
    f: str
    value: Any
    time: int
    error: str | None = None


def classify(exc: BaseException) -> tuple[OpType, str]:
    """``fail`` when the operation definitely did not happen, ``info`` when nobody can know.

    A refused grant is a definite failure; so is a serialization failure (the
    transaction rolled back). A lost connection or an unknown database error
    is indeterminate: the statement may have committed before the reply was
    lost, so it is never counted as a success or a failure.
    """
    if isinstance(exc, IndeterminateError):
        return "info", f"indeterminate: {exc.detail}"
    if isinstance(exc, OAuthError) and not isinstance(exc, InternalError):
        return "fail", f"{exc.kind}: {exc.detail}"
    cause = exc.__cause__ if isinstance(exc, InternalError) else exc
    if isinstance(cause, psycopg.errors.SerializationFailure | psycopg.errors.DeadlockDetected):
        return "fail", f"serialization: {type(cause).__name__}"
    if isinstance(exc, InternalError) and cause is None:
        # No database involved (e.g. a missing pepper): nothing was sent.
        return "fail", f"internal: {exc.detail}"
    return "info", f"indeterminate: {type(cause or exc).__name__}"


#: Sort key of ops: their ``monotonic_ns`` stamp.
_BY_TIME = attrgetter("time")


@dataclass
class History:
    """An append-only, thread-safe list of ``Op``; many processes' histories can be merged.

    Reading it in time order (iterating, ``pairs()``, the checkers) sorts ``ops``
    in place, once, rather than a sorted copy per read: the ops are the same,
    only their order becomes time order (stable for equal stamps).
    """

    ops: list[Op] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    #: ``len(ops)`` when it was last sorted: equal means still in time order.
    _sorted_len: int = field(default=-1, init=False, repr=False, compare=False)

    def append(self, op: Op) -> Op:
        with self._lock:
            self.ops.append(op)
        return op

    def invoke(self, process: int | str, f: str, value: Any) -> Op:
        return self.append(Op(process, "invoke", f, value, time.monotonic_ns()))

    def complete(
        self, process: int | str, type_: OpType, f: str, value: Any, error: str | None = None
    ) -> Op:
        return self.append(Op(process, type_, f, value, time.monotonic_ns(), error))

    def run(self, process: int | str, f: str, value: Any, call: Callable[[], T]) -> T | None:
        """Invoke ``call`` as operation ``f``, recording its completion; return its result or ``None``."""
        self.invoke(process, f, value)
        try:
            result = call()
        except Exception as exc:  # every outcome is recorded; none escapes unrecorded
            type_, reason = classify(exc)
            self.complete(process, type_, f, value, reason)
            return None
        self.complete(process, "ok", f, value)
        return result

    def extend(self, ops: Iterable[Op]) -> None:
        with self._lock:
            self.ops.extend(ops)

    def _in_time_order(self) -> int:
        """Sort ``ops`` by time in place unless already done; the number of ops to read.

        A sorted copy per read cost 1.28 M pointers and a key list each time on a
        big race; ops arrive from each racer process nearly in order, so timsort's
        runs make this close to linear.
        """
        with self._lock:
            n = len(self.ops)
            if self._sorted_len != n:
                self.ops.sort(key=_BY_TIME)
                self._sorted_len = n
            return n

    def __iter__(self) -> Iterator[Op]:
        """The ops in time order (those appended before the call)."""
        return islice(self.ops, self._in_time_order())

    def __len__(self) -> int:
        return len(self.ops)

    def iter_pairs(self, where: Callable[[Op], bool] | None = None) -> Iterator[tuple[Op, Op | None]]:
        """``pairs()`` one at a time, without building the list.

        ``where``: pair only the ops it accepts, as if the history held no
        others (without building that history). Order (``checkers.overlap``
        relies on it): completed operations in the time order of their
        completions, then the invokes never completed.
        """
        open_ops: dict[int | str, Op] = {}
        # An invoke followed by another of the same process never completed: indeterminate, as
        # one still open at the end (dropping it would hide an attempt that may have happened).
        superseded: list[Op] = []
        for op in self:
            if where is not None and not where(op):
                continue
            if op.type == "invoke":
                earlier = open_ops.get(op.process)
                if earlier is not None:
                    superseded.append(earlier)
                open_ops[op.process] = op
            else:
                inv = open_ops.pop(op.process, None)
                if inv is not None:
                    yield inv, op
        for inv in [*superseded, *open_ops.values()]:
            yield inv, None

    def pairs(self) -> list[tuple[Op, Op | None]]:
        """(invoke, completion) per operation, matched per process in time order."""
        return list(self.iter_pairs())

    def to_dataframe(self) -> pd.DataFrame:
        """One row per op; ``value`` dicts are spread into columns."""
        import pandas as pd

        rows = []
        for op in self:
            row = asdict(op)
            value = row.pop("value")
            if isinstance(value, dict):
                row.update({f"value.{k}": v for k, v in value.items()})
            else:
                row["value"] = value
            rows.append(row)
        return pd.DataFrame(rows)

    def operations(self) -> pd.DataFrame:
        """One row per operation: process, f, key, outcome, start, end (ns), duration (µs)."""
        import pandas as pd

        rows = []
        for inv, done in self.iter_pairs():
            value = inv.value if isinstance(inv.value, dict) else {"value": inv.value}
            rows.append(
                {
                    "process": inv.process,
                    "f": inv.f,
                    **value,
                    "outcome": done.type if done else "info",
                    "error": done.error if done else "never completed",
                    "start_ns": inv.time,
                    "end_ns": done.time if done else None,
                }
            )
        frame = pd.DataFrame(rows)
        if not frame.empty:
            frame["duration_us"] = (frame["end_ns"] - frame["start_ns"]) / 1000
        return frame


#: An op as racer processes send it: ``(process, type, f, value, time, error)``.
OpFields = tuple["int | str", OpType, str, Any, int, "str | None"]


def op_fields(op: Op) -> OpFields:
    """``op`` as a plain tuple: smaller to pickle than the object, rebuilt by ``OpInterner``."""
    return (op.process, op.type, op.f, op.value, op.time, op.error)


class OpInterner:
    """Builds the ``Op``s received from racer processes, sharing what repeats among them.

    A race of 64 racers x 10,000 codes sends 1.28 M ops whose strings are a
    handful (``"fail"``, ``"exchange"``, the same refusal 630,000 times) and
    whose ``value`` dicts are equal for the invoke and completions of every
    racer of a code. Unpickled, each op had copies of its own (~0.5 KB an op);
    shared, an op costs its object and its time stamp. Values stay dicts (equal
    ones are the same object: nobody mutates an op's value).
    """

    def __init__(self) -> None:
        self._values: dict[Any, Any] = {}
        self._processes: dict[int | str, int | str] = {}

    def value(self, value: Any) -> Any:
        """The shared copy of ``value`` (a dict of hashable items), else ``value`` itself."""
        if type(value) is not dict:
            return value
        key = tuple(value.items())
        try:
            return self._values.setdefault(key, value)
        except TypeError:  # an unhashable item: kept as is
            return value

    def op(self, fields: OpFields) -> Op:
        process, type_, f, value, stamp, error = fields
        return Op(
            self._processes.setdefault(process, process),
            cast(OpType, sys.intern(type_)),
            sys.intern(f),
            self.value(value),
            stamp,
            None if error is None else sys.intern(error),
        )
