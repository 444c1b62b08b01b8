"""Histories of operations, Jepsen style: every invoke gets exactly one ok, fail or info."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeVar

import pandas as pd
import psycopg

from harness.errors import IndeterminateError, InternalError, OAuthError

OpType = Literal["invoke", "ok", "fail", "info"]
T = TypeVar("T")


@dataclass(frozen=True)
class Op:
    """One entry: ``process`` did ``f`` with ``value``; ``time`` is ``time.monotonic_ns()``.

    ``monotonic_ns`` is one clock for every process of the machine, so
    histories from several processes merge and compare.
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


@dataclass
class History:
    """An append-only, thread-safe list of ``Op``; many processes' histories can be merged."""

    ops: list[Op] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

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

    def __iter__(self) -> Iterator[Op]:
        return iter(sorted(self.ops, key=lambda op: op.time))

    def __len__(self) -> int:
        return len(self.ops)

    def pairs(self) -> list[tuple[Op, Op | None]]:
        """(invoke, completion) per operation, matched per process in time order."""
        open_ops: dict[int | str, Op] = {}
        out: list[tuple[Op, Op | None]] = []
        for op in self:
            if op.type == "invoke":
                open_ops[op.process] = op
            else:
                inv = open_ops.pop(op.process, None)
                if inv is not None:
                    out.append((inv, op))
        out.extend((inv, None) for inv in open_ops.values())
        return out

    def to_dataframe(self) -> pd.DataFrame:
        """One row per op; ``value`` dicts are spread into columns."""
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
        rows = []
        for inv, done in self.pairs():
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
