"""The console's keys page query (`store.key_page`) on real stores (SQLite and PostgreSQL), keys
synced from real files: every filter, every sort both ways, keyset pages forward and back with
no row repeated or skipped while rows change, the bounded count, and damaged cursors."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from llmgateway.config.settings import Settings
from llmgateway.core.outcomes import ALL_MODELS, KeyStatus
from llmgateway.keyfiles import run_sync
from llmgateway.observe.masking import fingerprint, mask
from llmgateway.records import KeyFilter
from llmgateway.store import Store, key_page
from llmgateway.store.key_list import KeyListing, search_terms
from llmgateway.store.key_page import BadCursorError, Cursor, KeyPage, PageQuery, Sort
from llmgateway.store.tables import key_status, keys

BIG = [f"sk-page-{i:04d}-{'abcdefghij'[i % 10]}xyz{i:04d}" for i in range(60)]
SMALL = [f"AIza-small-key-{i:03d}-q{i:03d}" for i in range(7)]


def settings(tmp: Path) -> Settings:
    def provider(name: str, models: tuple[str, ...], shared: bool) -> dict[str, Any]:
        return {
            "provider_type": "openai_like",
            "keys_path": str(tmp / name),
            "api_base_url": "https://api.example.com/v1",
            "default_model": models[0],
            "shared_key_status": shared,
            "models": {m: {"endpoint_suffix": "/chat/completions"} for m in models},
            "access_control": {"gateway_access_token": f"page-token-{name}-0001"},
        }

    providers = {
        "big": provider("big", ("m1", "m2"), False),
        "small": provider("small", ("s1",), True),
    }
    return Settings.model_validate({"providers": providers})


@pytest.fixture
async def filled(store: Store, tmp_path: Path) -> Store:
    for name, values in (("big", BIG), ("small", SMALL)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "keys.txt").write_text("\n".join(values) + "\n")
    await run_sync(settings(tmp_path), store)
    ks = key_status.c
    async with store.engine.begin() as conn:
        await conn.execute(sa.update(key_status).values(next_check_at=1000 + ks.key_id % 7))
        await conn.execute(
            sa.update(key_status)
            .where(ks.key_id % 3 == 0)
            .values(status="invalid_key", status_code=401, failing_since=500 + ks.key_id % 5)
        )
        await conn.execute(
            sa.update(key_status)
            .where(ks.key_id % 5 == 1)
            .values(status="rate_limited", status_code=429, failing_since=700.0)
        )
        await conn.execute(sa.update(keys).where(keys.c.id % 11 == 2).values(disabled_at=900.0))
    return store


def place(listing: KeyListing) -> tuple[int, str]:
    """Where a row sits in the order: its key id and its model as stored."""
    return listing.key_id, ALL_MODELS if listing.model == "shared" else listing.model


async def walk(store: Store, query: PageQuery) -> list[tuple[int, str]]:
    """Every row, page after page by the next cursor."""
    seen: list[tuple[int, str]] = []
    cursor: Cursor | None = None
    while True:
        page = await key_page.key_page(store, query, cursor)
        seen += [place(r.listing) for r in page.rows]
        if page.next is None:
            return seen
        cursor = page.next


def expected_order(rows: list[Any], sort: Sort, descending: bool) -> list[tuple[int, str]]:
    attr = {
        Sort.KEY: None,
        Sort.STATUS: "status",
        Sort.FAILING_SINCE: "failing_since",
        Sort.NEXT_CHECK: "next_check_at",
        Sort.STATUS_CODE: "status_code",
    }[sort]

    def place(row: Any) -> tuple[int, str]:
        return row.key_id, row.raw_model

    if attr is None:
        return sorted((place(r) for r in rows), reverse=descending)
    having = [r for r in rows if getattr(r, attr) is not None]
    empty = [r for r in rows if getattr(r, attr) is None]
    first = sorted(having, key=lambda r: (getattr(r, attr), *place(r)), reverse=descending)
    return [place(r) for r in first] + sorted((place(r) for r in empty), reverse=descending)


async def all_rows(store: Store) -> list[Any]:
    async with store.engine.connect() as conn:
        query = sa.select(
            key_status.c.key_id,
            key_status.c.model.label("raw_model"),
            key_status.c.status,
            key_status.c.failing_since,
            key_status.c.next_check_at,
            key_status.c.status_code,
        )
        return list((await conn.execute(query)).all())


@pytest.mark.parametrize("sort", list(Sort))
@pytest.mark.parametrize("descending", [False, True])
async def test_every_sort_walks_every_row_once_in_order(
    filled: Store, sort: Sort, descending: bool
) -> None:
    rows = await all_rows(filled)
    want = expected_order(rows, sort, descending)
    got = await walk(filled, PageQuery(KeyFilter(), sort, descending, size=25))
    assert len(rows) == 60 * 2 + 7
    assert got == want


@pytest.mark.parametrize("sort", [Sort.KEY, Sort.FAILING_SINCE, Sort.STATUS])
async def test_pages_back_give_the_same_rows(filled: Store, sort: Sort) -> None:
    query = PageQuery(KeyFilter(), sort, size=25)
    pages: list[KeyPage] = []
    cursor: Cursor | None = None
    while True:
        page = await key_page.key_page(filled, query, cursor)
        pages.append(page)
        if page.next is None:
            break
        cursor = page.next
    assert pages[0].previous is None
    for earlier, later in itertools.pairwise(pages):
        assert later.previous is not None
        back = await key_page.key_page(filled, query, later.previous)
        assert [r.listing for r in back.rows] == [r.listing for r in earlier.rows]


async def test_rows_changing_between_pages_never_repeat_or_skip_one_that_stayed(
    filled: Store,
) -> None:
    query = PageQuery(KeyFilter(), Sort.FAILING_SINCE, size=25)
    first = await key_page.key_page(filled, query)
    seen = {place(r.listing) for r in first.rows}
    # rows already shown move to the end of the order, others start failing, one key goes
    moved = [r.listing.key_id for r in first.rows[:5]]
    async with filled.engine.begin() as conn:
        await conn.execute(
            sa.update(key_status).where(key_status.c.key_id.in_(moved)).values(failing_since=None)
        )
        await conn.execute(
            sa.update(key_status).where(key_status.c.key_id == 59).values(failing_since=10_000.0)
        )
    stayed = {
        place
        for place in expected_order(await all_rows(filled), Sort.FAILING_SINCE, False)
        if place[0] not in moved and place[0] != 59
    }
    rest: list[tuple[int, str]] = []
    cursor = first.next
    while cursor is not None:
        page = await key_page.key_page(filled, query, cursor)
        rest += [place(r.listing) for r in page.rows]
        cursor = page.next
    assert len(rest) == len(set(rest))
    assert not seen & {p for p in rest if p[0] not in moved}
    assert stayed <= seen | set(rest)


def ids(page: KeyPage) -> set[int]:
    return {r.listing.key_id for r in page.rows}


async def test_filters(filled: Store) -> None:
    rows = await all_rows(filled)

    async def page(**chosen: Any) -> KeyPage:
        return await key_page.key_page(filled, PageQuery(KeyFilter(**chosen), size=200))

    small = await page(provider="small")
    assert len(small.rows) == 7
    assert {r.listing.provider for r in small.rows} == {"small"}
    assert {r.listing.model for r in small.rows} == {"shared"}
    assert ids(await page(model="shared")) == ids(small)
    assert len((await page(model="m2")).rows) == 60
    assert (await page(provider="nobody")).rows == []
    invalid = await page(statuses=frozenset({KeyStatus.INVALID_KEY}))
    # the states partition the rows: a disabled key is `disabled`, whatever its stored status
    want = {r.key_id for r in rows if r.status == "invalid_key" and r.key_id % 11 != 2}
    assert ids(invalid) == want
    assert ids(await page(status_code=429)) == {r.key_id for r in rows if r.status_code == 429}
    disabled = await page(disabled=True)
    assert ids(disabled) == {i for i in {r.key_id for r in rows} if i % 11 == 2}
    assert all(r.listing.disabled_at == 900.0 for r in disabled.rows)
    key = BIG[17]
    by_print = await page(search=fingerprint(key)[:8])
    assert {r.listing.fingerprint for r in by_print.rows} == {fingerprint(key)}
    by_mask = await page(search=mask(key))
    assert {r.listing.masked for r in by_mask.rows} == {mask(key)}
    assert (await page(search=key[-4:])).rows == by_mask.rows
    both = await page(provider="big", search=mask(key), model="m1")
    assert [(r.listing.fingerprint, r.listing.model) for r in both.rows] == [
        (fingerprint(key), "m1")
    ]


async def test_the_count_stops_at_the_cap(filled: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    full = await key_page.key_page(filled, PageQuery(KeyFilter(), size=25))
    assert (full.total, full.capped) == (127, False)
    monkeypatch.setattr(key_page, "COUNT_CAP", 40)
    capped = await key_page.key_page(filled, PageQuery(KeyFilter(), size=25))
    assert (capped.total, capped.capped) == (40, True)
    assert len(capped.rows) == 25
    assert capped.next is not None


def test_damaged_cursors_are_refused() -> None:
    good = Cursor(Sort.FAILING_SINCE, False, False, 12.5, 3, "m1")
    assert Cursor.decode(good.encode(), Sort.FAILING_SINCE, False) == good
    for text in ("", "!!!", "bm90IGpzb24", good.encode()[:-3]):
        with pytest.raises(BadCursorError):
            Cursor.decode(text, Sort.FAILING_SINCE, False)
    with pytest.raises(BadCursorError, match="another sort"):
        Cursor.decode(good.encode(), Sort.KEY, False)
    with pytest.raises(BadCursorError, match="another sort"):
        Cursor.decode(good.encode(), Sort.FAILING_SINCE, True)
    for bad in (
        Cursor(Sort.FAILING_SINCE, False, False, "x", 3, "m1"),
        Cursor(Sort.FAILING_SINCE, False, False, float("nan"), 3, "m1"),
        Cursor(Sort.NEXT_CHECK, False, False, None, 3, "m1"),
    ):
        with pytest.raises(BadCursorError):
            Cursor.decode(bad.encode(), bad.sort, False)


def test_a_search_is_a_fingerprint_prefix_or_the_masked_suffix_only() -> None:
    assert search_terms("ABCDEF12") == ("abcdef12", None)
    assert search_terms("a1b2") == ("a1b2", "a1b2")
    assert search_terms("sk-…Zx9q") == (None, "Zx9q")
    assert search_terms("...Zx9q") == (None, "Zx9q")
    assert search_terms("Zx9q") == (None, "Zx9q")
    for bad in ("abc", "sk-page-0017", "page-0017-hxyz", "…toolong", "a b2", "g" * 65):
        with pytest.raises(ValueError, match="fingerprint"):
            search_terms(bad)


async def test_migration_0011_fills_the_suffix_of_existing_keys(db_url: str) -> None:
    """A database at 0010 with keys: 0011 records the four characters each masked key shows
    (none for a key too short to show any), so the page finds `sk-…a1b2` at once."""
    from alembic import command

    from llmgateway.store.connect import _alembic_config
    from llmgateway.store.schema import SCHEMA_HEAD

    values = ["sk-migrate-0001-abcdWXYZ", "short-key"]
    async with await Store.open(db_url) as store:

        def to_0010(sync: sa.Connection) -> None:
            config = _alembic_config()
            config.attributes["connection"] = sync
            command.upgrade(config, "0010")

        if db_url.startswith("sqlite"):
            Path(db_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        async with store.engine.begin() as conn:
            await conn.run_sync(to_0010)
            await conn.execute(
                sa.text(
                    "INSERT INTO providers (id, name, provider_type, active, created_at, "
                    "updated_at, revision) VALUES (1, 'p1', 'openai_like', true, 0, 0, 0)"
                )
            )
            for n, value in enumerate(values, start=1):
                await conn.execute(
                    sa.text(
                        "INSERT INTO keys (id, provider_id, value, active, added_at, revision) "
                        "VALUES (:id, 1, :value, true, 0, 0)"
                    ),
                    {"id": n, "value": value},
                )
        assert await store.upgrade() == SCHEMA_HEAD
        async with store.engine.connect() as conn:
            found = dict((await conn.execute(sa.select(keys.c.value, keys.c.suffix))).all())
    assert found == {"sk-migrate-0001-abcdWXYZ": "WXYZ", "short-key": None}
    assert mask(values[0]).endswith("WXYZ")
