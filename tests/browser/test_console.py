"""The console in a real browser against a real gateway process: log in, models by pool, a pool section
folded and unfolded from the keyboard, a model disabled on the page stops getting traffic, a key added,
a request appearing in Live within a second, a fallback's every attempt on its request page, the
Playground streaming; a screenshot of each page."""

from __future__ import annotations

import re

import httpx
from console_harness import ADMIN_TOKEN, GATEWAY_KEY, MODELS, Gateway, shot
from playwright.sync_api import Browser, Page, expect

from events.sqlite_store import SqliteStore
from events.types import AttemptStarted, ModelUpdated
from service.server import DB_NAME


def open_page(page: Page, route: str, heading: str) -> None:
    page.goto(f"/admin/#/{route}")
    expect(page.get_by_role("heading", name=heading, level=1)).to_be_visible()


def log_events(gateway: Gateway) -> list[object]:
    store = SqliteStore(gateway.data_dir / DB_NAME, read_only=True)
    try:
        return [event for _, event in store.read_after(0)]
    finally:
        store.close()


def test_logging_in_takes_the_token_once_and_keeps_it_out_of_the_page(
    browser: Browser, gateway: Gateway
) -> None:
    context = browser.new_context(base_url=gateway.url)
    try:
        page = context.new_page()
        page.goto("/admin/#/models")
        token = page.get_by_label("Admin token")
        expect(token).to_be_focused()
        shot(page, "login")
        token.fill("not-the-token")
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("alert")).to_contain_text("Wrong admin token")
        expect(page.get_by_role("navigation", name="Console")).to_be_hidden()

        token.fill(ADMIN_TOKEN)
        page.keyboard.press("Enter")
        # Back where the operator was going, the nav shown, the feed connected.
        expect(page.get_by_role("heading", name="Models & Fallback", level=1)).to_be_visible()
        expect(page.get_by_role("navigation", name="Console")).to_be_visible()
        expect(page.locator("#feed-state")).to_contain_text("live")
        assert ADMIN_TOKEN not in page.content()
        assert "sb_admin" not in page.evaluate("document.cookie")  # HttpOnly: no script reads it
        cookies = {c["name"]: c for c in context.cookies()}
        assert cookies["sb_admin"]["httpOnly"] and cookies["sb_admin"]["sameSite"] == "Strict"

        page.get_by_role("button", name="Log out").click()
        expect(page.get_by_label("Admin token")).to_be_visible()
        page.reload()
        expect(page.get_by_label("Admin token")).to_be_visible()  # the session ended server-side
    finally:
        context.close()


def test_models_are_grouped_by_pool(page: Page) -> None:
    open_page(page, "models", "Models & Fallback")
    for pool in ("fast", "balanced", "smart"):
        region = page.locator(f"#pool-{pool}")
        expect(region).to_be_visible()
        expected = sorted(f"local/{m}" for m, p, _ in MODELS if p == pool)
        expect(region.locator("tbody tr")).to_have_count(len(expected))
        refs = sorted(region.locator("tbody tr").evaluate_all("rows => rows.map(r => r.dataset.ref)"))
        assert refs == expected
        for row in region.locator("tbody tr").all():
            expect(row.locator(".badge").first).to_have_text(pool)
    shot(page, "models")


def test_a_pool_section_folds_and_unfolds_from_the_keyboard(page: Page) -> None:
    open_page(page, "models", "Models & Fallback")
    toggle = page.get_by_role("button", name=re.compile(r"^\W*Fast"))
    region = page.locator("#pool-fast")
    expect(toggle).to_have_attribute("aria-controls", "pool-fast")
    expect(toggle).to_have_attribute("aria-expanded", "true")
    expect(page.get_by_role("region", name=re.compile("Fast"))).to_be_visible()
    toggle.focus()
    page.keyboard.press("Enter")
    expect(toggle).to_have_attribute("aria-expanded", "false")
    expect(region).to_be_hidden()
    expect(toggle).to_be_focused()
    page.keyboard.press("Space")
    expect(toggle).to_have_attribute("aria-expanded", "true")
    expect(region).to_be_visible()
    # Tab reaches the next section's header from the rows' controls, in page order.
    page.get_by_role("button", name=re.compile(r"^\W*Balanced")).focus()
    page.keyboard.press("Shift+Tab")
    expect(page.locator("#pool-fast :focus")).to_have_count(1)


def test_a_model_disabled_on_the_page_gets_no_more_traffic(page: Page, gateway: Gateway) -> None:
    target = "local/gpt-4o-mini"
    assert gateway.chat(target).headers["x-routed-via"] == target  # it serves while enabled
    open_page(page, "models", "Models & Fallback")
    row = page.locator(f'tr[data-ref="{target}"]')
    row.get_by_role("button", name=f"Disable {target}").click()
    expect(row.get_by_role("button", name=f"Enable {target}")).to_be_visible()
    expect(row).to_contain_text("disabled")
    events = log_events(gateway)
    disabled_at = max(i for i, e in enumerate(events) if isinstance(e, ModelUpdated) and e.enabled is False)
    routed = [gateway.chat("auto-fast").headers.get("x-routed-via") for _ in range(12)]
    assert routed == ["local/ok"] * 12  # the fast pool's other model takes it all
    after = log_events(gateway)[disabled_at:]
    assert not [e for e in after if isinstance(e, AttemptStarted) and e.model == "gpt-4o-mini"]
    shot(page, "models-disabled")
    row.get_by_role("button", name=f"Enable {target}").click()  # leave the catalog as the module found it
    expect(row.get_by_role("button", name=f"Disable {target}")).to_be_visible()


def test_a_model_moves_in_the_chain_and_changes_pool_on_the_page(page: Page, gateway: Gateway) -> None:
    open_page(page, "models", "Models & Fallback")
    ok = page.locator('tr[data-ref="local/ok"]')
    expect(ok.locator(".position")).to_have_text("#2")
    ok.get_by_role("button", name="Move local/ok up the chain").click()
    expect(ok.locator(".position")).to_have_text("#1")
    expect(page.locator('tr[data-ref="local/fail:503"] .position')).to_have_text("#2")
    chain = [m["ref"] for m in gateway.admin("GET", "/admin/api/models").json()["data"]][:2]
    assert chain == ["local/ok", "local/fail:503"]
    ok.get_by_role("button", name="Move local/ok down the chain").click()
    expect(ok.locator(".position")).to_have_text("#2")

    page.get_by_label("Pool of local/echo").select_option("smart")
    moved = page.locator('#pool-smart tr[data-ref="local/echo"]')
    expect(moved).to_be_visible()
    expect(page.locator('#pool-balanced tr[data-ref="local/echo"]')).to_have_count(0)
    assert gateway.admin("GET", "/admin/api/models/local/echo").json()["pool"] == "smart"
    moved.get_by_label("Pool of local/echo").select_option("balanced")
    expect(page.locator('#pool-balanced tr[data-ref="local/echo"]')).to_be_visible()


def test_a_key_added_on_the_keys_page_is_listed_and_never_shown_again(page: Page, gateway: Gateway) -> None:
    secret = "sk-browser-added-0123456789abcdef"
    open_page(page, "keys", "Keys")
    before = page.locator("#key-list tbody tr").count()
    page.get_by_label("Platform").fill("local")
    page.get_by_label("Key", exact=True).fill(secret)
    page.get_by_label("Label (optional)").fill("from the browser")
    page.get_by_role("button", name="Add key").click()
    expect(page.locator("#key-list tbody tr")).to_have_count(before + 1)
    added = page.locator("#key-list tbody tr", has_text="from the browser")
    expect(added).to_contain_text("vault")
    expect(added).to_contain_text("local")
    expect(page.get_by_label("Key", exact=True)).to_have_value("")
    assert secret not in page.content()
    listed = gateway.admin("GET", "/admin/api/keys").text
    assert secret not in listed and "from the browser" in listed
    page.reload()
    expect(page.locator("#key-list tbody tr", has_text="from the browser")).to_be_visible()
    assert secret not in page.content()
    shot(page, "keys")
    key_id = added.get_attribute("data-key")
    page.once("dialog", lambda dialog: dialog.accept())  # "Remove key ...?"
    added.get_by_role("button", name=f"Remove {key_id}").click()
    expect(page.locator(f'tr[data-key="{key_id}"]')).to_have_count(0)
    assert key_id not in gateway.admin("GET", "/admin/api/keys").text


def test_a_key_is_disabled_enabled_and_checked_on_the_keys_page(page: Page, gateway: Gateway) -> None:
    key = gateway.admin("GET", "/admin/api/keys").json()["data"][0]["id"]
    open_page(page, "keys", "Keys")
    row = page.locator(f'tr[data-key="{key}"]')
    row.get_by_role("button", name=f"Disable {key}").click()
    expect(row.locator(".badge")).to_have_text("disabled")
    row.get_by_role("button", name=f"Enable {key}").click()
    expect(row.locator(".badge")).to_have_text("ok")
    row.get_by_role("button", name=f"Check {key} now").click()
    expect(page.locator("#toast")).to_contain_text(f"{key}: check passed")


def test_a_request_appears_in_live_within_a_second(page: Page, gateway: Gateway) -> None:
    open_page(page, "live", "Live")
    expect(page.locator("#live-state")).to_contain_text("live")
    answer = gateway.chat("local/ok")
    assert answer.status_code == 200
    request_id = answer.headers["x-request-id"]
    completed = page.locator(f'tr[data-request="{request_id}"]', has_text="request_completed")
    expect(completed).to_be_visible(timeout=1000)
    expect(page.locator(f'tr[data-request="{request_id}"]', has_text="request_received")).to_be_visible()
    # Paused, new events are held back and counted; resumed, they are shown.
    page.get_by_role("button", name="Pause").click()
    held = gateway.chat("local/echo").headers["x-request-id"]
    expect(page.locator("#live-held")).to_contain_text("held")
    expect(page.locator(f'tr[data-request="{held}"]')).to_have_count(0)
    page.get_by_role("button", name="Resume").click()
    expect(page.locator(f'tr[data-request="{held}"]').first).to_be_visible()
    # Filtered by request id, only that request's rows remain.
    page.get_by_label("Request id").fill(request_id)
    expect(page.locator(f'#live-rows tr:not([data-request="{request_id}"])')).to_have_count(0)
    shot(page, "live")


def test_live_reconnects_after_the_last_event_it_saw_with_no_duplicate(page: Page, gateway: Gateway) -> None:
    open_page(page, "live", "Live")
    expect(page.locator("#live-state")).to_contain_text("live")
    first = gateway.chat("local/ok").headers["x-request-id"]
    expect(page.locator(f'tr[data-request="{first}"]', has_text="request_completed")).to_be_visible()
    page.get_by_role("button", name="Reconnect").click()
    expect(page.locator("#live-state")).to_contain_text("live")
    second = gateway.chat("local/ok").headers["x-request-id"]
    expect(page.locator(f'tr[data-request="{second}"]', has_text="request_completed")).to_be_visible()
    # Resumed after the last seq seen: nothing twice, nothing missing, in the log's order.
    expect(page.locator(f'tr[data-request="{first}"]', has_text="request_completed")).to_have_count(1)
    seqs = page.locator("#live-rows tr").evaluate_all("rows => rows.map(r => Number(r.dataset.seq))")
    assert seqs == list(range(seqs[0], seqs[0] - len(seqs), -1)), seqs


def test_a_fallbacks_request_page_shows_every_attempt(page: Page, gateway: Gateway) -> None:
    answer = gateway.chat("local/fail:503")  # named first, fails; the chain answers
    assert answer.status_code == 200 and answer.headers["x-fallback-attempts"] != "0"
    request_id = answer.headers["x-request-id"]
    routed = answer.headers["x-routed-via"]
    open_page(page, f"requests/{request_id}", f"Request {request_id}")
    attempts = page.locator("tr.attempt")
    expect(attempts).to_have_count(int(answer.headers["x-fallback-attempts"]) + 1)
    expect(attempts.first).to_contain_text("local/fail:503")
    expect(attempts.first).to_have_attribute("data-outcome", "failed")
    expect(attempts.last).to_contain_text(routed)
    expect(attempts.last).to_have_attribute("data-outcome", "ok")
    expect(page.locator("svg.waterfall rect")).to_have_count(attempts.count())
    expect(page.locator("article.decision")).to_have_count(attempts.count())
    expect(page.locator("#replay-verdict")).to_contain_text("reproduces")
    shot(page, "request")
    open_page(page, "requests", "Requests")
    expect(page.locator(f'tr[data-request="{request_id}"]')).to_be_visible()
    shot(page, "requests")
    page.get_by_label("Model", exact=True).fill("local/echo")  # answered by another model: filtered out
    page.get_by_role("button", name="Apply").click()
    expect(page.locator(f'tr[data-request="{request_id}"]')).to_have_count(0)
    page.get_by_label("Model", exact=True).fill("")
    page.get_by_label("Mode", exact=True).select_option("named")
    page.get_by_role("button", name="Apply").click()
    expect(page.locator(f'tr[data-request="{request_id}"]')).to_be_visible()
    expect(page.locator(f'tr[data-request="{request_id}"]')).to_contain_text("chat completions")
    page.get_by_label("Protocol", exact=True).select_option("messages")  # it came by chat: filtered out
    page.get_by_role("button", name="Apply").click()
    expect(page.locator(f'tr[data-request="{request_id}"]')).to_have_count(0)


def test_the_playground_streams_an_answer_and_links_its_request(page: Page) -> None:
    open_page(page, "playground", "Playground")
    page.get_by_label("Mode or model").select_option("local/ok")
    page.get_by_label("Message").fill("hello from the playground")
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#pg-answer")).to_have_text("Hello from ok.")
    expect(page.locator("#pg-meta")).to_contain_text("local/ok")
    expect(page.get_by_role("button", name="Send")).to_be_enabled()  # the stream has ended
    link = page.locator("#pg-request-link")
    request_id = link.inner_text()
    shot(page, "playground")
    link.click()
    expect(page.get_by_role("heading", name=f"Request {request_id}", level=1)).to_be_visible()
    expect(page.locator("tr.attempt")).to_have_count(1)


def test_a_sessions_pin_is_shown_and_cleared_on_the_sessions_page(page: Page, gateway: Gateway) -> None:
    pinned = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {GATEWAY_KEY}", "X-Session-Id": "browser-conversation"},
        json={"model": "local/echo", "messages": [{"role": "user", "content": "remember me"}]},
        timeout=20,
    )
    assert pinned.status_code == 200
    (session,) = [s for s in gateway.admin("GET", "/admin/api/sessions").json()["data"] if s["pin"]]
    open_page(page, "sessions", "Sessions")
    row = page.locator(f'tr[data-session="{session["session"]}"]')
    expect(row).to_contain_text("local/echo")
    shot(page, "sessions")
    row.get_by_role("button", name=f"Clear the pin of {session['session']}").click()
    expect(row.get_by_role("button", name=re.compile("Clear the pin"))).to_have_count(0)
    assert gateway.admin("GET", f"/admin/api/sessions/{session['session']}").json()["pin"] is None


def test_the_overview_and_analytics_pages_show_the_traffic(page: Page, gateway: Gateway) -> None:
    gateway.chat("local/ok")
    open_page(page, "overview", "Overview")
    expect(page.locator(".card", has_text="Keys healthy")).to_contain_text("/")
    expect(page.locator("#feed-state")).to_contain_text("live")
    gateway.chat("local/ok")  # counted live, from the feed
    expect(page.locator("#live-counters .card", has_text="Succeeded").locator(".card-value")).to_have_text(
        "1"
    )
    expect(page.locator("figure", has_text="Latency").locator("path.line").first).to_be_attached()
    shot(page, "overview")
    open_page(page, "analytics", "Analytics")
    expect(page.locator("figure", has_text="Attempts by model")).to_contain_text("local/ok")
    page.get_by_label("model", exact=True).focus()  # radios: the arrow keys choose
    page.keyboard.press("ArrowRight")
    expect(page.get_by_label("platform", exact=True)).to_be_checked()
    expect(page.locator("figure", has_text="Attempts by platform")).to_contain_text("local")
    page.get_by_text("7d", exact=True).click()
    expect(page.get_by_label("7d", exact=True)).to_be_checked()
    expect(page.get_by_role("heading", name="Over time")).to_be_visible()
    expect(page.get_by_role("alert").filter(has_text=re.compile("."))).to_have_count(0)
    shot(page, "analytics")
