"""Targets: implementations of the repository contract, loaded by name or ``module:factory``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from harness.clock import Clock
from harness.database import Database
from harness.errors import SetupError
from harness.settings import Settings
from harness.sut.faithful import OAuthRepository
from harness.targets.endpoint import is_description, load_description
from harness.targets.http import HttpTarget

Target = OAuthRepository
Factory = Callable[..., Any]

#: Shipped targets: name → "module:factory".
BUILTIN: dict[str, str] = {
    "faithful": "harness.sut.faithful:make",
    "hardened": "harness.sut.hardened:make",
    "naive": "harness.sut.naive:make",
}

REQUIRED_METHODS = (
    "store_authorization_code",
    "validate_authorization_code",
    "exchange_code",
    "refresh",
)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else ""


def known_targets() -> list[str]:
    return sorted(BUILTIN)


def _resolve(spec: str) -> Factory:
    ref = BUILTIN.get(spec, spec)
    if ":" not in ref:
        raise SetupError(
            f"unknown target {spec!r}: use one of {', '.join(known_targets())} "
            "or 'package.module:factory'"
        )
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise SetupError(f"target {spec!r}: write it as 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # a reviewer's module may raise anything on import
        raise SetupError(f"target {spec!r}: cannot import module {module_name!r}: "
                         f"{type(exc).__name__}: {_first_line(exc)}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise SetupError(f"target {spec!r}: {module_name!r} has no callable {attr!r}")
    return factory  # type: ignore[no-any-return]


def load_target(
    name: str | None,
    db: Database | None,
    *,
    pepper: str | bytes | None = None,
    clock: Clock | None = None,
    **options: Any,
) -> Any:
    """Build the target ``name`` (default ``HARNESS_TARGET`` or ``faithful``) over ``db``.

    ``name`` is a shipped target, ``package.module:factory``, or an endpoint
    description (a ``.toml`` file, ``harness.targets.endpoint``): a real
    server reached over HTTP, which needs no database and takes no pepper,
    clock or options (what it cannot do, its capabilities say). ``pepper``
    defaults to ``HARNESS_AT_REST_PEPPER``. A factory is called as
    ``factory(db, pepper=…, clock=…, **options)`` and must return an object
    with the repository's methods.
    """
    settings = Settings.from_env()
    spec = name or settings.target
    if is_description(spec):
        if options:
            raise SetupError(f"target {spec!r} is a server described over HTTP: it cannot be built "
                             f"with {', '.join(sorted(options))}")
        return HttpTarget(load_description(spec))
    if db is None:
        raise SetupError(f"target {spec!r} runs in process: it needs a database")
    factory = _resolve(spec)
    kwargs: dict[str, Any] = {"pepper": pepper if pepper is not None else settings.pepper}
    if clock is not None:
        kwargs["clock"] = clock
    try:
        target = factory(db, **kwargs, **options)
    except TypeError as exc:
        raise SetupError(f"target {spec!r}: factory rejected its arguments: {_first_line(exc)}") from None
    except SetupError:
        raise
    except Exception as exc:  # a reviewer's factory may raise anything
        raise SetupError(f"target {spec!r}: the factory raised {type(exc).__name__}: "
                         f"{_first_line(exc)}") from None
    missing = [m for m in REQUIRED_METHODS if not callable(getattr(target, m, None))]
    if missing:
        raise SetupError(f"target {spec!r} lacks the repository methods: {', '.join(missing)}")
    return target
