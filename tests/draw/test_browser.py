"""The SVG and the HTML report in a real headless Chromium: no console errors, the op boxes and axis labels
are there and laid out, and a screenshot is written. Skips (saying why) where Chromium or chromedriver is missing;
`.ci/run` installs both from the system's packages."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import torchcarve as tc
from torchcarve.draw import draw, render, shape_label

from .test_svg import digits_graph

selenium = pytest.importorskip("selenium", reason="selenium is not installed (it is in the dev extra)")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")
pytest.importorskip("matplotlib")
try:
    render.find_engine()
except tc.CarveError:
    pytest.skip("no layout engine: pip install graphviz-pure (the draw extra)", allow_module_level=True)


def _found(names: tuple[str, ...]) -> str | None:
    return next((found for name in names if (found := shutil.which(name) or (name if Path(name).is_file() else None))),
                None)


@pytest.fixture(scope="module")
def browser():
    binary, driver_path = _found(BROWSERS), _found(DRIVERS + ("chromedriver",))
    if binary is None or driver_path is None:
        pytest.skip(f"no headless Chromium here (browser: {binary}, chromedriver: {driver_path}); "
                    "install the chromium and chromium-driver packages (.ci/run does)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1000", "--allow-file-access-from-files"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))   # Service: nothing downloaded
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def open_page(driver, path: Path) -> list[dict]:
    """Load `path`, return the console messages of the load (the log is drained on every read)."""
    driver.get_log("browser")
    driver.get(path.resolve().as_uri())
    return driver.get_log("browser")


def screenshot(driver, path: Path) -> Path:
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, min(max(height, 600), 8000))
    assert driver.save_screenshot(str(path))
    assert path.stat().st_size > 5000
    return path


def test_svg_renders_in_chromium(browser, tmp_path: Path) -> None:
    graph = digits_graph()
    svg_path = tmp_path / "digits.svg"
    draw(graph, svg_path)
    errors = [entry for entry in open_page(browser, svg_path) if entry["level"] == "SEVERE"]
    assert not errors
    assert browser.execute_script("return document.querySelectorAll('g.node.op').length") == 13
    assert browser.execute_script("return document.querySelectorAll('g.family-linear').length") == 4
    width = browser.execute_script("return document.querySelector('g.graph').getBBox().width")
    assert width > 100                                                   # laid out, not collapsed to a point
    text = browser.execute_script("return document.documentElement.textContent")
    assert all(shape_label(value.type) in text for value in graph.values())   # every wire's axes, as rendered text
    assert "batch × 32 × 8 × 8" in text and "batch × 10" in text
    screenshot(browser, tmp_path / "digits-svg.png")


def test_report_renders_in_chromium(browser, tmp_path: Path) -> None:
    result = tc.optimize(digits_graph(), "prune{ratio=0.5},fold-bn", report=True)
    page = result.report.to_html(tmp_path / "report.html")
    errors = [entry for entry in open_page(browser, page) if entry["level"] == "SEVERE"]
    assert not errors
    boxes = browser.execute_script(
        "return Array.from(document.querySelectorAll('section.pass')).map("
        "s => [s.querySelectorAll('figure.before g.node.op').length, s.querySelectorAll('figure.after g.node.op').length])")
    assert boxes == [[13, 13], [13, 10]]                                 # prune keeps every op; fold-bn drops 3 BNs
    removed = browser.execute_script("return document.querySelectorAll('figure.before g.node.op.removed').length")
    assert removed >= 3
    labels = browser.execute_script("return Array.from(document.querySelectorAll('figure.chart text'))"
                                    ".map(t => t.textContent)")
    for label in ("parameters", "MACs / item", "bytes moved", "latency (ms)", "max |output change|"):
        assert label in labels
    changed = browser.execute_script("return Array.from(document.querySelectorAll('g.edge.changed text'))"
                                     ".map(t => t.textContent)")
    assert "batch × 32 → 16 × 8 × 8" in changed
    shown = browser.execute_script("return document.querySelector('figure.chart svg').getBoundingClientRect().height")
    assert shown > 50
    screenshot(browser, tmp_path / "report.png")
