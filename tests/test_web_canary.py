"""Every page of the console, in Chromium, over a recording whose every field is an
attack (tests/hostile_recording.py): nothing recorded runs, opens a dialog, trips the
Content-Security-Policy (which would mean it reached the page as markup), or becomes a
link or a source of its own. The pages are found by following the console's own links,
so a page added later is visited too."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from urllib.parse import quote, urlsplit

from playwright.sync_api import Dialog, Page

from tests.cleanup_scripts import record
from tests.hostile_recording import ATTACKS, SID, hostile_script
from tests.web_console import chromium, served

# Run before any page script: what an attack would set, and what the CSP reports.
WATCH = """
window.__violations = [];
document.addEventListener('securitypolicyviolation',
    e => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));
"""
MOST_PAGES = 80


def checked(page: Page, url: str, dialogs: list[str]) -> list[str]:
    """Visit ``url``; assert nothing ran; the same-origin links it has."""
    response = page.goto(url)
    assert response is not None and response.status < 500, url
    if page.locator("script[src]").count():
        # A page of ours that fetches what it shows: until it has, and shown it.
        page.wait_for_load_state("networkidle")

    state = page.evaluate("[typeof window.canary, window.__violations]")
    assert state == ["undefined", []], (url, state)
    assert dialogs == [], (url, dialogs)
    # Every link and source is one of the console's own paths: none is a recorded
    # string made into a javascript:, data: or another site's URL.
    refs = page.eval_on_selector_all(
        "[href], [src], [action], [formaction], [srcdoc], [onerror], [onload]",
        "els => els.map(e => [e.tagName, e.getAttribute('href') ?? e.getAttribute('src')"
        " ?? e.getAttribute('action') ?? e.getAttribute('formaction') ?? '!attr'])",
    )
    links = []
    for tag, ref in refs:
        assert ref.startswith(("/", "?", "#")) and not ref.startswith("//"), (url, tag, ref)
        if tag == "A":
            links.append(ref)
    # As text only: no element came of an attack.
    assert page.locator("iframe, img, [onload], [onerror]").count() == 0, url
    return links


def test_no_page_runs_what_was_recorded(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    asyncio.run(record(f"sqlite:///{db}", hostile_script()))
    with served(db) as base, chromium() as browser:
        page = browser.new_page()
        page.add_init_script(WATCH)
        dialogs: list[str] = []

        def opened(dialog: Dialog) -> None:
            dialogs.append(dialog.message)
            dialog.dismiss()

        page.on("dialog", opened)
        session = "/sessions/" + quote(SID, safe="")
        todo = ["/", session, session + "/replay?speed=1000", "/frames", "/live", "/stats"]
        seen: set[str] = set()
        while todo and len(seen) < MOST_PAGES:
            path = todo.pop(0)
            if path in seen or re.search(r"\.(jsonl|css|js|svg)$|/raw$", urlsplit(path).path):
                continue
            seen.add(path)
            todo += [link for link in checked(page, base + path, dialogs) if link not in seen]
        assert session in seen and len(seen) >= 3
        # The attack reached the pages, as text.
        listing = page.goto(base + "/")
        assert listing is not None
        assert ATTACKS[0] in page.locator("body").inner_text()
