"""The keys page in a real browser, on a real `serve` with a few hundred keys: the filter
form puts the filter in the URL (a reload keeps it), pages go by keyset (`after=`, never an
offset) at the size asked, a row's Disable turns the row disabled in place, as the store
holds it, and a bulk action the server refuses says why on the page. No key is ever whole in
the page or its URL."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

from playwright.async_api import Dialog, Locator, Page, expect

from llmgateway.observe.masking import fingerprint
from llmgateway.store.key_list import by_fingerprint
from llmgateway.testing.fake_upstream import FakeUpstream
from llmgateway.testing.faults import Behavior
from tests.browser.console_server import ConsoleServer
from tests.browser.pages import Problems, disabled_fingerprints, go_to, log_in
from tests.helpers import eventually

ROWS = "#keys-table tbody tr"


def query(page: Page) -> dict[str, list[str]]:
    return parse_qs(urlsplit(page.url).query)


def invalid(console: ConsoleServer) -> set[str]:
    return {fingerprint(k) for k in (*console.keys.openai_invalid, *console.keys.gemini_invalid)}


async def fingerprints(rows: Locator) -> set[str]:
    found: list[str] = await rows.evaluate_all(
        "rows => rows.map(r => r.querySelector('td small code').textContent.trim())"
    )
    return set(found)


def accept_dialogs(page: Page) -> list[str]:
    """Accept every confirmation `page` asks from now on; the list of their messages."""
    asked: list[str] = []

    async def accept(dialog: Dialog) -> None:
        asked.append(dialog.message)
        await dialog.accept()

    page.on("dialog", accept)
    return asked


async def filtered_to_invalid(page: Page, console: ConsoleServer) -> None:
    """Log in, open the keys page and pick state invalid_key and 25 rows in the form."""
    await log_in(page, console)
    await page.wait_for_url(f"{console.url}/")
    await go_to(page, "Keys")
    await page.get_by_label("State").select_option("invalid_key")
    await expect(page).to_have_url(re.compile(r"state=invalid_key"))
    await page.get_by_label("Rows").select_option("25")
    await expect(page).to_have_url(re.compile(r"size=25"))


async def test_the_filter_lives_in_the_url_and_pages_go_by_keyset(
    page: Page, console: ConsoleServer
) -> None:
    await filtered_to_invalid(page, console)
    rows = page.locator(ROWS)
    await expect(rows).to_have_count(25)
    await expect(rows.locator("span.state")).to_have_text(["invalid_key"] * 25)
    await expect(page.locator("p.count")).to_have_text(f"{len(invalid(console))} matching rows")
    first = await fingerprints(rows)
    await page.reload()
    await expect(page.get_by_label("State")).to_have_value("invalid_key")
    await expect(page.get_by_label("Rows")).to_have_value("25")
    await expect(rows).to_have_count(25)
    assert await fingerprints(rows) == first
    await page.get_by_role("link", name="Next →").click()
    await expect(page).to_have_url(re.compile(r"after="))
    assert query(page)["state"] == ["invalid_key"]
    assert "offset" not in query(page)
    await expect(rows).to_have_count(25)
    await expect(rows.locator("span.state")).to_have_text(["invalid_key"] * 25)
    second = await fingerprints(rows)
    assert not first & second
    assert first | second <= invalid(console)
    html = await page.content()
    assert not any(key in html or key in page.url for key in console.keys.every())


async def test_a_row_disable_shows_in_the_row_and_the_store(
    page: Page, console: ConsoleServer
) -> None:
    await filtered_to_invalid(page, console)
    row = page.locator(ROWS).first
    row_id = await row.get_attribute("id")
    [chosen] = await fingerprints(row)
    await row.get_by_role("button", name="Disable").click()
    swapped = page.locator(f"#{row_id}")
    await expect(swapped.locator("span.state")).to_have_text("disabled")
    await expect(swapped.get_by_role("button", name="Enable")).to_be_visible()
    assert await disabled_fingerprints(console) == {chosen}


async def test_a_bulk_disable_of_the_filter_shows_its_progress_until_done(
    page: Page, console: ConsoleServer
) -> None:
    await filtered_to_invalid(page, console)  # no reload: the filter came by htmx
    asked = accept_dialogs(page)
    await page.locator("select[name=action]").select_option("disable")
    await page.get_by_role("button", name="Apply to all matching").click()
    await expect(page).to_have_url(re.compile(r"/admin/jobs/\d+$"))
    assert len(asked) == 1
    assert "EVERY" not in asked[0], asked
    job = page.locator("div.job")
    await expect(job.locator("progress")).to_be_visible()
    await expect(job.get_by_role("status")).to_have_text("done", timeout=30_000)
    total = str(len(invalid(console)))
    await expect(job.locator("progress")).to_have_attribute("value", total)
    await expect(job).to_contain_text(f"{total} of {total} keys")
    assert await disabled_fingerprints(console) == invalid(console)


async def test_a_refused_bulk_action_is_shown_on_the_page(
    page: Page, console: ConsoleServer, problems: Problems
) -> None:
    await filtered_to_invalid(page, console)
    keys_url = page.url
    # a form the server no longer accepts (here, a state it does not know: a stale page)
    await page.locator("form[action='/admin/jobs'] input[name=state]").evaluate(
        "input => { input.value = 'sleepy'; }"
    )
    asked = accept_dialogs(page)
    await page.get_by_role("button", name="Apply to all matching").click()
    refusal = page.locator("#bulk-result").get_by_role("alert")
    await expect(refusal).to_contain_text("Not submitted: a state is one of: ")
    assert len(asked) == 1
    assert page.url == keys_url  # still on the filtered keys page
    await expect(page.locator("#console-error")).to_have_count(0)
    assert await disabled_fingerprints(console) == set()
    # the refusal's 400 is the one error Chromium logs: it is the answer, not a fault
    [refused] = problems.seen
    assert "status of 400" in refused
    problems.seen.clear()


async def test_the_pager_is_named_apart_from_the_main_navigation(
    page: Page, console: ConsoleServer
) -> None:
    await filtered_to_invalid(page, console)
    await expect(page.get_by_role("navigation", name="Pages of keys")).to_be_visible()
    await expect(page.get_by_role("navigation", name="Pages", exact=True)).to_have_count(1)


async def test_export_downloads_the_keys_of_the_filter(page: Page, console: ConsoleServer) -> None:
    await filtered_to_invalid(page, console)  # no reload: the filter came by htmx
    asked = accept_dialogs(page)
    async with page.expect_download() as waiting:
        await page.get_by_role("button", name="Export matching keys").click()
    download = await waiting.value
    assert asked == ["Download the matching keys WITH their secrets?"]
    exported = set((await download.path()).read_text().split())
    assert exported == {*console.keys.openai_invalid, *console.keys.gemini_invalid}
    assert not any(key in download.url for key in console.keys.every())


async def test_a_recheck_turns_a_mended_key_valid(
    page: Page, console: ConsoleServer, fake: FakeUpstream
) -> None:
    await filtered_to_invalid(page, console)
    row = page.locator(ROWS).first
    row_id = await row.get_attribute("id")
    [chosen] = await fingerprints(row)
    [mended] = [k for k in console.keys.every() if fingerprint(k) == chosen]
    fake.set_behavior(mended, Behavior())  # the provider takes the key again
    await row.get_by_role("button", name="Re-check").click()
    await expect(page.locator(f"#{row_id}").get_by_role("status")).to_be_visible()

    async def probed_valid() -> bool:
        async with console.store() as store:
            [rows], _ = await by_fingerprint(store, chosen)
        return [r.status for r in rows] == ["valid"]

    await eventually(probed_valid, 20, step=0.2, what=f"{chosen} probed valid")
    await page.reload()
    await page.get_by_label("Search").fill(chosen)
    await page.get_by_label("State").select_option("")
    await expect(page.locator(ROWS)).to_have_count(1)
    await expect(page.locator(f"{ROWS} span.state")).to_have_text("valid")


async def test_two_imported_keys_appear_on_the_page(page: Page, console: ConsoleServer) -> None:
    pasted = [f"sk-console-imported-{i:04d}-{'k' * 16}" for i in range(2)]
    await log_in(page, console)
    await page.wait_for_url(f"{console.url}/")
    await go_to(page, "Keys")
    await page.locator("form[action='/admin/keys/import'] select[name=provider]").select_option(
        "openai"
    )
    await page.get_by_label("Keys, one a line").fill("\n".join(pasted))
    await page.get_by_role("button", name="Import").click()
    await expect(page).to_have_url(re.compile(r"/admin/keys\?provider=openai$"))
    for key in pasted:
        await page.get_by_label("Search").fill(fingerprint(key))
        await page.get_by_label("Search").press("Enter")
        await expect(page).to_have_url(re.compile(rf"q={fingerprint(key)}"))
        rows = page.locator(ROWS)
        await expect(rows).to_have_count(1)
        await expect(rows.locator("td small code").first).to_have_text(fingerprint(key))
    html = await page.content()
    assert not any(key in html or key in page.url for key in pasted)
    folder = console.settings.providers["openai"].keys_path
    written = [p for p in folder.iterdir() if p.name not in ("keys.txt", "team-b.txt")]
    [imported] = written
    assert imported.read_text().split()[-2:] == pasted
