"""End to end in a real headless Chromium (the OS package) driven by Playwright: upload a generated clip and photo,
press Run, wait for the result video to play, download it and check its frame count and rate.

Skipped, with the reason, when Playwright or the browser is missing (``.ci/run`` installs both). Set
``RETARGET_APP_SCREENSHOT=path.png`` to keep the page's screenshot (the README's picture comes from here);
``RETARGET_CHROMIUM`` names another Chromium binary.
"""

from __future__ import annotations

import os
import shutil
from fractions import Fraction
from pathlib import Path

import pytest

from tests.app.helpers import video_frames

CHROMIUM = os.environ.get("RETARGET_CHROMIUM", "/usr/bin/chromium")
# Headless, and no background connections (a closed network refuses them, which stalls start-up).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 120_000


@pytest.fixture
def playwright_api():
    """Playwright's ``sync_playwright``, or a skip with the reason (checked before the app is served)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = 'browser test skipped: playwright is not installed (pip install -e ".[test-app]")'
        print(reason)
        pytest.skip(reason)
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        reason = f"browser test skipped: no Chromium at {CHROMIUM} (apt-get install chromium)"
        print(reason)
        pytest.skip(reason)
    return sync_playwright


def _set_numbers(page, values: dict) -> None:
    """Type ``values`` ({elem_id: number}) into the page's number fields, and type again any that a late re-render
    of a slow first page load put back to its default before the job starts (checked until all hold)."""
    fields = {elem_id: page.locator(f"#{elem_id} input[type=number]") for elem_id in values}
    pending = dict(values)
    for _ in range(20):
        for elem_id, value in pending.items():
            fields[elem_id].fill(str(value))
            fields[elem_id].press("Enter")
            fields[elem_id].blur()
        page.wait_for_timeout(100)
        pending = {k: v for k, v in values.items() if float(fields[k].input_value() or "nan") != float(v)}
        if not pending:
            return
    raise AssertionError(f"the page kept resetting {sorted(pending)}")


def test_run_in_a_real_browser(playwright_api, served_app, media, tmp_path):
    url, service, _ = served_app
    with playwright_api() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url, wait_until="networkidle")  # the app's scripts and config loaded
            page.locator("#retarget-driving input[type=file]").set_input_files(str(media["clip"]))
            page.locator("#retarget-identity input[type=file]").set_input_files(str(media["photo"]))
            page.wait_for_selector("#retarget-driving video")
            page.get_by_text("Sampling", exact=True).click()
            _set_numbers(page, {"retarget-steps": 2, "retarget-guidance": 1.0})
            # opening the section of the time range leaves it empty: the whole clip (a number field showed 0 to 0)
            page.get_by_text("Faces and time range", exact=True).click()
            for field in ("#retarget-start textarea", "#retarget-end textarea"):
                page.wait_for_selector(field)
                assert page.locator(field).input_value() == ""

            page.click("#retarget-run")
            page.wait_for_selector("#retarget-result video")
            page.wait_for_function("document.querySelector('#retarget-result video').readyState >= 1")
            duration = page.evaluate("document.querySelector('#retarget-result video').duration")
            assert abs(duration - 12 * 1001 / 30000) < 0.1  # the page's player read the whole clip
            # the clip's last two frames have no face: the job says so in the page's warnings box
            assert page.locator("#retarget-status textarea").input_value() == "Done with 1 warning(s)."
            warnings = page.locator("#retarget-warnings textarea").input_value()
            assert "no face in 2 of 12 frames (0.33-0.40 s)" in warnings

            with page.expect_download() as download_info:
                page.locator("#retarget-download a[download]").click()
            downloaded = tmp_path / download_info.value.suggested_filename
            download_info.value.save_as(downloaded)

            screenshot = os.environ.get("RETARGET_APP_SCREENSHOT")
            if screenshot:
                page.screenshot(path=screenshot, full_page=True)
        finally:
            browser.close()

    assert next(iter(service.sessions)).options.steps == 2  # the page's settings reached the job
    assert downloaded.name == "clip-retarget.mp4"
    frames, rate = video_frames(downloaded)
    assert frames.shape == (12, 32, 32, 3)
    assert rate == Fraction(30000, 1001)
