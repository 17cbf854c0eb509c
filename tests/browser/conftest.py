"""Fixtures for the browser tests: one headless Chromium per session, a prepared server, a fresh page per test.

The server is the shared `comfy_server` (a real main.py with --disable-api-nodes on a free loopback port), or, for
development, a server you started yourself (e.g. `make serve`) named by PSLD_COMFY_URL.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import comfy_page  # tests/browser is on sys.path (no __init__.py: pytest rootdir-relative import)
from helpers.comfy_client import ComfyClient
from helpers.hosts import ARTIFACTS
from helpers.tiny_models import CHECKPOINT

REPO = Path(__file__).resolve().parents[2]
PHOTOS = sorted((REPO / "tests" / "data").glob("*.png"))  # the names the example workflows' LoadImage nodes use
# Settings a returning user has: no first-visit template browser over the graph.
SETTINGS = {"Comfy.TutorialCompleted": True}


@pytest.fixture(scope="session")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # fail, never skip: a skipped browser test would look like a passed one in CI
        pytest.fail("Playwright is not installed in this Python: run tools/install_browser.sh "
                    f"{sys.executable} (or `make browser-deps`).")
    with sync_playwright() as playwright:
        chromium = comfy_page.launch(playwright)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Screenshots and saved workflows of the browser tests (kept by CI as artifacts)."""
    directory = ARTIFACTS / "browser"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture(scope="session")
def page_server(request) -> dict:
    """The server the page talks to, prepared like a returning user's: settings, and the photos the example
    workflows load, uploaded through /upload/image as LoadImage's upload button does (the mask-inpainting photo
    with its transparent hole is made by tools/make_workflows.py). Returns url, photo and checkpoint names."""
    url = os.environ.get("PSLD_COMFY_URL", "").rstrip("/")
    if url:
        checkpoint = os.environ.get("PSLD_TINY_CHECKPOINT", CHECKPOINT)
    else:
        url = request.getfixturevalue("comfy_url")
        checkpoint = request.getfixturevalue("tiny_checkpoint")
    for name, value in SETTINGS.items():
        comfy_page.post_setting(url, name, value)
    client = ComfyClient(url)
    for photo in PHOTOS:
        client.upload_image(photo.read_bytes(), photo.name)
    sys.path.insert(0, str(REPO / "tools"))
    from make_workflows import HOLE_PHOTO, photo_with_hole
    client.upload_image(photo_with_hole(), HOLE_PHOTO)
    return {"url": url, "photo": "astronaut_128.png", "checkpoint": checkpoint}


@pytest.fixture
def open_page(browser, page_server, request):
    """open_page(vue_nodes=False) -> (page, log). The page log is printed when a test ends (shown on failure)."""
    opened = []

    def opener(*, vue_nodes: bool = False):
        page, log = comfy_page.open_comfy(browser, page_server["url"], vue_nodes=vue_nodes)
        opened.append((page, log))
        return page, log

    yield opener
    for page, log in opened:
        if log.console or log.page_errors or log.outside_requests:
            print(f"--- page log of {request.node.name} ---\n{log.report()}")
        page.context.close()
