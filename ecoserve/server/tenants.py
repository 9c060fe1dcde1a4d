"""Tenants (``--tenants FILE``): who may see and call which models, by token, and their share.

The file is TOML, one table per tenant::

    [tenants.alice]
    token = "..."          # Authorization: Bearer <token>
    models = ["a_cnn"]     # what alice sees, calls, loads and unloads
    share = 1.0            # her weight when the board is saturated (default 1)
    rate_limit = 200       # optional, requests per second
    burst = 50             # optional, requests at once within the rate (default: 1 s worth)

Tokens are secrets: a :class:`Tenant` keeps only the SHA-256 digest of its token, so no
repr, log line or error message can show the token, and :meth:`Tenants.authenticate`
compares digests of equal length with :func:`hmac.compare_digest` against every tenant, not
stopping at a match, so the time taken tells nothing about which token, or how much of one,
was right. Everything wrong in the file is reported at once, each line naming the file and
the tenant, so an operator fixes it in one pass.
"""

from __future__ import annotations

import difflib
import hashlib
import hmac
import math
import re
import sys
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ecoserve.core.fair_share import DEFAULT_RESERVE, DEFAULT_WINDOW_S, FairShare, Limits

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: Shorter tokens can be guessed; ``secrets.token_urlsafe(32)`` gives 43 characters.
MIN_TOKEN_CHARS = 16
#: Tenant names go into logs and metric labels, so they are plain words.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: A token travels in a header: printable ASCII, no spaces.
_TOKEN = re.compile(r"[!-~]+")
_KEYS = ("token", "models", "share", "rate_limit", "burst")
_HOW_TO_MAKE = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"

M = TypeVar("M")


class TenantsError(ValueError):
    """The tenants file cannot be used; the message lists every problem found."""


def _digest(token: str) -> bytes:
    # surrogatepass: a header decoded with stray surrogates still hashes (and matches nothing)
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class Tenant:
    """One tenant: its name, the models it may use, its weight and optional rate limit.

    Built from the token but holding only its digest (``token_digest``, not in repr).
    """

    name: str
    token: InitVar[str]
    models: frozenset[str]
    share: float = 1.0
    rate_limit: float | None = None
    burst: float | None = None
    token_digest: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self, token: str) -> None:
        object.__setattr__(self, "token_digest", _digest(token))
        object.__setattr__(self, "models", frozenset(self.models))

    def may_use(self, model: str) -> bool:
        """Whether the tenant may see, call, load and unload ``model``."""
        return model in self.models

    def visible(self, models: Iterable[M], key: Callable[[M], str] = str) -> list[M]:
        """The entries of ``models`` the tenant may see, in their order (``key`` gives an
        entry's model name, e.g. ``lambda e: e["name"]`` for a repository index)."""
        return [m for m in models if key(m) in self.models]

    @property
    def limits(self) -> Limits:
        """The tenant's terms for the admission policy."""
        return Limits(weight=self.share, rate=self.rate_limit, burst=self.burst)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, else None.

    The scheme is matched without regard to case (RFC 7235) and spaces around the parts are
    ignored; anything else (another scheme, no token, a token with spaces) is no token.
    """
    if authorization is None:
        return None
    parts = authorization.split(None, 1)
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return None
    token = parts[1].strip()
    return token if token and not any(c.isspace() for c in token) else None


class Tenants:
    """The tenants of one daemon: authentication by token, and their admission policy."""

    def __init__(self, tenants: Iterable[Tenant]) -> None:
        self._tenants = tuple(tenants)
        if not self._tenants:
            raise TenantsError("no tenants: give at least one")
        self._by_name = {t.name: t for t in self._tenants}
        if len(self._by_name) != len(self._tenants):
            raise TenantsError("two tenants have the same name; give each its own")
        if len({t.token_digest for t in self._tenants}) != len(self._tenants):
            raise TenantsError("two tenants have the same token; give each its own")

    def authenticate(self, authorization: str | None) -> Tenant | None:
        """The tenant whose token the ``Authorization`` header value carries, else None.

        Compares against every tenant whatever matched, in time independent of the token.
        """
        given = bearer_token(authorization)
        if given is None:
            return None
        probe = _digest(given)
        found: Tenant | None = None
        for tenant in self._tenants:
            if hmac.compare_digest(probe, tenant.token_digest):
                found = tenant
        return found

    def get(self, name: str) -> Tenant | None:
        return self._by_name.get(name)

    def __iter__(self) -> Iterator[Tenant]:
        return iter(self._tenants)

    def __len__(self) -> int:
        return len(self._tenants)

    def __repr__(self) -> str:
        return f"Tenants({[t.name for t in self._tenants]!r})"

    def policy(
        self,
        capacity: int,
        throughput: float,
        *,
        reserve: float = DEFAULT_RESERVE,
        window_s: float = DEFAULT_WINDOW_S,
    ) -> FairShare:
        """A fresh admission policy over these tenants (see :mod:`ecoserve.core.fair_share`)."""
        limits = {t.name: t.limits for t in self._tenants}
        return FairShare(limits, capacity, throughput, reserve=reserve, window_s=window_s)


def load_tenants(path: str | Path, served: Collection[str]) -> Tenants:
    """Read and check a tenants file against the names of the models the daemon serves."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise TenantsError(f"cannot read tenants file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise TenantsError(f"tenants file {path} is not valid TOML: {exc}") from None
    return parse_tenants(data, served, f"tenants file {path}")


def parse_tenants(
    data: Mapping[str, Any], served: Collection[str], source: str = "tenants file"
) -> Tenants:
    """Tenants from parsed TOML; every problem is reported at once, prefixed by ``source``."""
    problems: list[str] = []
    for key in data:
        if key != "tenants":
            problems.append(
                f"unknown key {key!r} at the top; the file holds [tenants.<name>] tables"
            )
    table = data.get("tenants")
    if table is None:
        problems.append("no [tenants.<name>] table; add one per tenant")
        table = {}
    elif not isinstance(table, dict) or not table:
        problems.append("'tenants' must hold one [tenants.<name>] table per tenant")
        table = {}
    tenants: list[Tenant] = []
    owners: dict[bytes, str] = {}
    for name, entry in table.items():
        where = f"tenant {name!r}"
        if not isinstance(entry, dict):
            problems.append(f"{where}: must be a table ([tenants.{name}]), not {entry!r}")
            continue
        errors: list[str] = []
        tenant = _tenant(name, entry, served, errors)
        problems.extend(f"{where}: {e}" for e in errors)
        if tenant is None:
            continue
        other = owners.setdefault(tenant.token_digest, name)
        if other != name:
            problems.append(
                f"tenants {other!r} and {name!r} have the same token; give each its own"
            )
            continue
        tenants.append(tenant)
    if problems:
        raise TenantsError(f"{source}:\n  " + "\n  ".join(problems))
    return Tenants(tenants)


def _tenant(
    name: str, entry: Mapping[str, Any], served: Collection[str], errors: list[str]
) -> Tenant | None:
    """One tenant from its table, or None with what is wrong appended to ``errors``."""
    if not _NAME.fullmatch(name):
        errors.append(
            "a tenant's name is 1-64 letters, digits, '_', '.' or '-', starting with a "
            "letter or digit"
        )
    for key in entry:
        if key not in _KEYS:
            close = [k for k in _KEYS if k.startswith(key)] or difflib.get_close_matches(
                key, _KEYS, n=1
            )
            hint = f"; did you mean {close[0]!r}?" if close else ""
            errors.append(f"unknown key {key!r} (known: {', '.join(sorted(_KEYS))}){hint}")
    token = entry.get("token")
    secret = token if isinstance(token, str) else ""
    if token is None:
        errors.append(
            f'no token; add token = "..." ({MIN_TOKEN_CHARS}+ characters: {_HOW_TO_MAKE})'
        )
    elif not isinstance(token, str):
        errors.append("token must be a string")
    elif len(token) < MIN_TOKEN_CHARS:
        errors.append(
            f"token is {len(token)} characters; use at least {MIN_TOKEN_CHARS} ({_HOW_TO_MAKE})"
        )
    elif not _TOKEN.fullmatch(token):
        errors.append("token must be printable ASCII with no spaces (it travels in a header)")
    models = entry.get("models")
    names = frozenset(m for m in models if isinstance(m, str)) if isinstance(models, list) else None
    if models is None:
        errors.append('no models; add models = ["<model name>", ...]')
    elif not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        errors.append('models must be a list of model names, e.g. models = ["a_cnn"]')
    elif not models:
        errors.append("models is empty; list the models this tenant may use")
    else:
        unknown = sorted(set(models) - set(served))
        if unknown:
            errors.append(
                f"{'model' if len(unknown) == 1 else 'models'} {', '.join(map(repr, unknown))} "
                f"not served here (served: {', '.join(sorted(served)) or 'none'})"
            )
    share = _number(
        entry, "share", 1.0, "> 0, the tenant's weight when the board is saturated", errors
    )
    rate = _number(entry, "rate_limit", None, "> 0 requests per second", errors)
    burst = _number(entry, "burst", None, ">= 1 requests", errors, least=1.0)
    if burst is not None and rate is None and "rate_limit" not in entry:
        errors.append("burst needs a rate_limit; add one or drop burst")
    if errors or names is None or share is None:
        return None
    return Tenant(name, secret, names, share, rate, burst)


def _number(
    entry: Mapping[str, Any],
    key: str,
    default: float | None,
    what: str,
    errors: list[str],
    least: float | None = None,
) -> float | None:
    """A positive finite number (``>= least`` when given) at ``key``, else ``default``."""
    if key not in entry:
        return default
    value = entry[key]
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok and (value >= least if least is not None else value > 0):
        return float(value)
    errors.append(f"{key} must be a number {what}, got {value!r}")
    return None
