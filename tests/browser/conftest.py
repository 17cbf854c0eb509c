"""Fixtures for the browser tests: one headless Chromium per session, a fresh page per test, artifacts folder."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import comfy_page  # tests/browser is on sys.path (no __init__.py: pytest rootdir-relative import)

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("PSLD_ARTIFACTS", REPO / ".artifacts")) / "browser"


@pytest.fixture(scope="session")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (tools/install_browser.sh)")
    with sync_api.sync_playwright() as playwright:
        chromium = comfy_page.launch(playwright)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def comfy_url():
    # provisional: replaced by the shared comfy_server fixture
    url = os.environ.get("PSLD_COMFY_URL")
    if not url:
        pytest.skip("PSLD_COMFY_URL not set")
    return url.rstrip("/")


@pytest.fixture
def open_page(browser, comfy_url, request):
    """open_page(vue_nodes=False) -> (page, log). On failure the test's page log is printed."""
    opened = []

    def opener(*, vue_nodes: bool = False):
        page, log = comfy_page.open_comfy(browser, comfy_url, vue_nodes=vue_nodes)
        opened.append((page, log))
        return page, log

    yield opener
    for page, log in opened:
        if log.console or log.page_errors or log.outside_requests:
            print(f"--- page log of {request.node.name} ---\n{log.report()}")
        page.context.close()
