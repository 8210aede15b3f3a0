"""Remake the screenshots of docs/pictures.md (headless Chromium through selenium, as tests/draw/test_browser.py).

    python docs/images/screenshots.py --demo carve-demo     # after `carve demo -o carve-demo`

Writes docs/images/report-digits.png (the top of the demo's report.html) and docs/images/bert-layer.png
(BERT-base, random init: the 12 encoder layers drawn once). PNGs are palette-quantized to stay small.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

import torchcarve as tc
from torchcarve.draw import draw_html

HERE = Path(__file__).parent


def browser(width: int, height: int) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={width},{height}",
                 "--hide-scrollbars"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))


def shoot(page: Path, target: Path, width: int, height: int, scroll_to: str | None = None) -> None:
    driver = browser(width, height)
    try:
        driver.get(page.resolve().as_uri())
        if scroll_to:
            driver.execute_script(f"document.querySelector({scroll_to!r}).scrollIntoView()")
        raw = target.with_suffix(".raw.png")
        driver.save_screenshot(str(raw))
    finally:
        driver.quit()
    Image.open(raw).convert("RGB").quantize(colors=128).save(target, optimize=True)
    raw.unlink()
    print(f"{target}: {target.stat().st_size / 1024:.0f} KiB")


def bert_page(folder: Path) -> Path:
    import transformers

    torch.manual_seed(0)
    graph = tc.capture(transformers.BertModel(transformers.BertConfig()).eval(), (torch.randint(0, 1000, (1, 128)),))
    return draw_html(graph, folder / "bert.html")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--demo", required=True, help="the output folder of `carve demo` (holds report.html)")
    args = parser.parse_args()
    shoot(Path(args.demo) / "report.html", HERE / "report-digits.png", 1300, 2200)
    with tempfile.TemporaryDirectory() as folder:
        shoot(bert_page(Path(folder)), HERE / "bert-layer.png", 1000, 1900, scroll_to="g.cluster.folded")


if __name__ == "__main__":
    main()
