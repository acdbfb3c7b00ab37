"""The HTML report in a real headless Chromium (Playwright): it loads with no console error and no request
leaving the page, every image decodes, and the summary table shows metrics.json's numbers.

Skipped, with the reason, when Playwright or Chromium is missing (the skip logic of the app's browser test). Set
``RETARGET_EVAL_SCREENSHOT=path.png`` to keep a screenshot of the page (the README's picture comes from here)."""

from __future__ import annotations

import json
import os

from retarget.cli import main
from retarget.evaluation.report import format_number
from tests.app.test_browser import CHROMIUM, CHROMIUM_ARGS, playwright_api  # noqa: F401


def _values(metrics: dict, prefix: str = "") -> dict[str, object]:
    """metrics.json flattened to dotted keys."""
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update(_values(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_report_in_a_real_browser(playwright_api, tmp_path, media, face_models_dir):  # noqa: F811
    report = tmp_path / "report"
    assert main(["eval", str(media["clip"]), "--driving", str(media["clip"]), "--identity", str(media["photo"]),
                 "-o", str(report), "--models", str(face_models_dir), "--device", "cpu", "--no-progress"]) == 0
    metrics = _values(json.loads((report / "metrics.json").read_text()))
    with playwright_api() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            errors, requests = [], []
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("request", lambda request: requests.append(request.url))
            page.goto((report / "report.html").as_uri())
            page.wait_for_load_state("load")
            images = page.evaluate("Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")
            cells = page.evaluate("Object.fromEntries(Array.from(document.querySelectorAll('td[data-key]'))"
                                  ".map(c => [c.dataset.key, c.textContent]))")
            screenshot = os.environ.get("RETARGET_EVAL_SCREENSHOT")
            if screenshot:
                page.screenshot(path=screenshot, full_page=False)
        finally:
            browser.close()
    assert errors == []
    assert all(url.startswith(("file:", "data:")) for url in requests), requests
    assert len(images) == 4 and all(complete and width > 0 for _, complete, width in images), images
    assert len(cells) >= 13
    for key, text in cells.items():
        assert text == format_number(metrics[key]), key
    assert cells["expression.exp_mse"] != "n/a" and cells["identity.arcface.mean"] != "n/a"
