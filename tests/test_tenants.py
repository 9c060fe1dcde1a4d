"""The tenants file: what a mistake in it says, how a token is checked, what a tenant sees."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from ecoserve.server import tenants as tenants_mod
from ecoserve.server.tenants import (
    MIN_TOKEN_CHARS,
    Tenant,
    Tenants,
    TenantsError,
    bearer_token,
    load_tenants,
    parse_tenants,
)

ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdefgh"
SERVED = {"a_cnn", "b_cnn", "shared"}

GOOD = f"""
[tenants.alice]
token = "{ALICE}"
models = ["a_cnn", "shared"]
share = 2.0
rate_limit = 200
burst = 50

[tenants.bob]
token = "{BOB}"
models = ["b_cnn"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tenants.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str) -> Tenants:
    return load_tenants(write(tmp_path, text), SERVED)


def problem(tmp_path: Path, text: str) -> str:
    with pytest.raises(TenantsError) as err:
        load(tmp_path, text)
    message = str(err.value)
    assert str(tmp_path / "tenants.toml") in message  # the file is named
    return message


# --- loading ----------------------------------------------------------------------------


def test_a_good_file_loads_with_defaults(tmp_path: Path) -> None:
    loaded = load(tmp_path, GOOD)
    assert [t.name for t in loaded] == ["alice", "bob"] and len(loaded) == 2
    alice, bob = loaded.get("alice"), loaded.get("bob")
    assert alice is not None and bob is not None and loaded.get("carol") is None
    assert (alice.models, alice.share, alice.rate_limit, alice.burst) == (
        frozenset({"a_cnn", "shared"}),
        2.0,
        200.0,
        50.0,
    )
    assert (bob.share, bob.rate_limit, bob.burst) == (1.0, None, None)
    assert alice.limits.weight == 2.0 and alice.limits.rate == 200.0


def entry(**fields: str) -> str:
    body = {"token": f'"{ALICE}"', "models": '["a_cnn"]', **fields}
    return "[tenants.alice]\n" + "".join(f"{k} = {v}\n" for k, v in body.items() if v)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            entry(models='["a_cnn", "nope"]'),
            "model 'nope' not served here (served: a_cnn, b_cnn, shared)",
        ),
        (entry(token='"short"'), f"token is 5 characters; use at least {MIN_TOKEN_CHARS}"),
        (entry(token='""'), f"token is 0 characters; use at least {MIN_TOKEN_CHARS}"),
        (entry(token=""), "no token; add token"),
        (entry(token="12"), "token must be a string"),
        (entry(token='"has a space in the middle"'), "printable ASCII with no spaces"),
        (entry(share="0"), "share must be a number > 0"),
        (entry(share="-1.5"), "share must be a number > 0"),
        (entry(share="true"), "share must be a number > 0"),
        (entry(share="nan"), "share must be a number > 0"),
        (entry(rate_limit="0"), "rate_limit must be a number > 0"),
        (entry(rate_limit="-3"), "rate_limit must be a number > 0"),
        (entry(rate_limit='"fast"'), "rate_limit must be a number > 0"),
        (entry(burst="5"), "burst needs a rate_limit"),
        (entry(rate_limit="10", burst="0.5"), "burst must be a number >= 1"),
        (
            entry(rate="200"),
            "unknown key 'rate' (known: burst, models, rate_limit, share, token); did you mean 'rate_limit'?",
        ),
        (entry(color='"blue"'), "unknown key 'color'"),
        (entry(**{"rate-limit": "200"}), "did you mean 'rate_limit'?"),
        (entry(models=""), "no models"),
        (entry(models="[]"), "models is empty"),
        (entry(models='"a_cnn"'), "models must be a list of model names"),
        (
            '[tenants."bad name!"]\ntoken = "' + ALICE + '"\nmodels = ["a_cnn"]\n',
            "a tenant's name is",
        ),
        ("[tenants]\nalice = 3\n", "must be a table"),
        ("tenants = 3\n", "one [tenants.<name>] table per tenant"),
        ("[tenants]\n", "one [tenants.<name>] table per tenant"),
        ("", "no [tenants.<name>] table"),
        ("admin = true\n" + GOOD, "unknown key 'admin' at the top"),
    ],
)
def test_each_mistake_is_named_with_the_file_and_tenant(
    tmp_path: Path, text: str, expected: str
) -> None:
    message = problem(tmp_path, text)
    assert expected in message
    if text.startswith("[tenants.alice]"):
        assert "tenant 'alice'" in message
    assert ALICE not in message  # never the secret


def test_a_duplicated_token_names_both_tenants_and_not_the_token(tmp_path: Path) -> None:
    text = GOOD.replace(BOB, ALICE)
    message = problem(tmp_path, text)
    assert "tenants 'alice' and 'bob' have the same token; give each its own" in message
    assert ALICE not in message


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = f"""
[tenants.alice]
token = "short"
models = ["nope"]
share = 0

[tenants.bob]
token = "{BOB}"
models = ["b_cnn"]
rate_limit = -1
"""
    lines = problem(tmp_path, text).splitlines()[1:]
    assert len(lines) == 4
    assert sum("tenant 'alice'" in line for line in lines) == 3
    assert sum("tenant 'bob'" in line for line in lines) == 1


def test_an_unreadable_or_broken_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(TenantsError, match="cannot read tenants file .*missing.toml"):
        load_tenants(tmp_path / "missing.toml", SERVED)
    assert "is not valid TOML" in problem(tmp_path, "[tenants.alice\n")


def test_parse_names_its_source_and_needs_at_least_one_tenant() -> None:
    with pytest.raises(TenantsError, match="^inline:"):
        parse_tenants({"tenants": {}}, SERVED, "inline")
    with pytest.raises(TenantsError, match="no tenants"):
        Tenants([])
    with pytest.raises(TenantsError, match="same token"):
        Tenants([Tenant("a", ALICE, frozenset()), Tenant("b", ALICE, frozenset())])
    with pytest.raises(TenantsError, match="same name"):
        Tenants([Tenant("a", ALICE, frozenset()), Tenant("a", BOB, frozenset())])


# --- authentication ---------------------------------------------------------------------


@pytest.fixture()
def both(tmp_path: Path) -> Tenants:
    return load(tmp_path, GOOD)


@pytest.mark.parametrize(
    ("header", "who"),
    [
        (f"Bearer {ALICE}", "alice"),
        (f"Bearer {BOB}", "bob"),
        (f"bearer {ALICE}", "alice"),
        (f"BEARER {ALICE}", "alice"),
        (f"  Bearer    {ALICE}  ", "alice"),
        (f"Bearer\t{ALICE}", "alice"),
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer ", None),
        (ALICE, None),
        (f"Basic {ALICE}", None),
        (f"Bearer {ALICE}x", None),
        (f"Bearer {ALICE[:-1]}", None),
        (f"Bearer x{ALICE}", None),
        (f"Bearer {ALICE} {ALICE}", None),
        (f"Bearer {ALICE.upper()}", None),
        ("Bearer not-anyones-token-at-all", None),
        ("Bearer \ud800-not-text-\u00e9", None),
    ],
)
def test_authenticate(both: Tenants, header: str | None, who: str | None) -> None:
    found = both.authenticate(header)
    assert (found.name if found else None) == who


def test_authenticate_compares_with_every_tenant_even_after_a_match(
    both: Tenants, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = tenants_mod.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(tenants_mod.hmac, "compare_digest", counting)
    assert both.authenticate(f"Bearer {ALICE}") is both.get("alice")  # alice is first
    assert len(calls) == 2
    assert all(len(a) == len(b) == 32 for a, b in calls)  # digests: equal lengths, always
    calls.clear()
    assert both.authenticate(f"Bearer {'z' * 500}") is None
    assert len(calls) == 2 and all(len(a) == 32 for a, _ in calls)


def test_bearer_token_parsing() -> None:
    assert bearer_token(f"Bearer {ALICE}") == ALICE
    assert bearer_token(f" bEaReR  {ALICE} ") == ALICE
    assert bearer_token("Token abc") is None
    assert bearer_token("Bearer a b") is None


def test_no_token_in_repr_str_or_pickle(both: Tenants) -> None:
    alice = both.get("alice")
    assert alice is not None
    for text in (repr(alice), str(alice), repr(both), str(both), repr(list(both))):
        assert ALICE not in text and BOB not in text
    assert "alice" in repr(alice) and "token" not in repr(alice)
    assert ALICE.encode() not in pickle.dumps(alice)
    assert not hasattr(alice, "token")


# --- what a tenant sees -----------------------------------------------------------------


def test_a_tenant_sees_and_uses_only_its_models(both: Tenants) -> None:
    alice, bob = both.get("alice"), both.get("bob")
    assert alice is not None and bob is not None
    assert alice.may_use("a_cnn") and alice.may_use("shared")
    assert not alice.may_use("b_cnn") and not alice.may_use("A_CNN") and not alice.may_use("")
    assert bob.may_use("b_cnn") and not bob.may_use("shared")
    names = ["shared", "b_cnn", "a_cnn", "other"]
    assert alice.visible(names) == ["shared", "a_cnn"]  # in the index's order
    index = [{"name": n, "state": "READY"} for n in names]
    assert bob.visible(index, key=lambda e: e["name"]) == [{"name": "b_cnn", "state": "READY"}]
    assert alice.visible([]) == []


def test_the_policy_takes_each_tenants_weight_and_rate_limit(both: Tenants) -> None:
    fs = both.policy(capacity=1000, throughput=30.0)
    assert fs.tenants == ("alice", "bob") and (fs.capacity, fs.throughput) == (1000, 30.0)
    decisions = [fs.admit("alice", 0.0) for _ in range(51)]
    assert all(d.admitted for d in decisions[:50])  # her burst of 50
    assert decisions[50].reason == "rate"
    assert decisions[50].retry_after_s == pytest.approx(1 / 200)
    for i in range(100):
        fs.admit("bob", i / 100)
        fs.admit("alice", i / 100)
    # both ask for far more than the board's 30 a second: her share 2 is twice his 1
    assert fs.fair_rates(1.0) == pytest.approx({"alice": 20.0, "bob": 10.0})
