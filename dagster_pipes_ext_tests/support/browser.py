"""Headless Chromium (Debian's ``chromium``) driven by Playwright for Python, for UI tests."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

REQUIRED_ENV = "DAGSTER_PIPES_EXT_E2E_REQUIRED"
"""Set to ``1`` (CI does) to turn a missing browser or Playwright into a failure, not a skip."""

CHROMIUM = "/usr/bin/chromium"

# Root in a container on a closed network: no sandbox, no GPU, nothing that phones home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
]


def chromium_path() -> str | None:
    """Debian's Chromium: ``/usr/bin/chromium``, else ``chromium`` on PATH."""
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    return shutil.which("chromium")


def missing_requirements() -> list[str]:
    """What the UI tests need and cannot find, each with how to install it."""
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append(
            "the Playwright Python package (in the dev dependency group: `make install`, "
            "or `uv sync`; Playwright's own browser download is not needed)"
        )
    if chromium_path() is None:
        missing.append(f"Chromium at {CHROMIUM} (install it with `apt-get install -y chromium`)")
    return missing


def require_browser() -> None:
    """Skip (or fail, with ``DAGSTER_PIPES_EXT_E2E_REQUIRED=1``) when something is missing."""
    missing = missing_requirements()
    if not missing:
        return
    reason = "UI end-to-end test needs " + " and ".join(missing)
    if os.environ.get(REQUIRED_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRED_ENV}=1)", pytrace=False)
    pytest.skip(reason)


@contextmanager
def launch_chromium() -> Iterator[Browser]:
    """A headless Chromium with a fresh temporary profile; closed (with its driver) on exit."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    assert executable is not None
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS, timeout=60_000
        )
        try:
            yield browser
        finally:
            browser.close()


def artifacts_dir(repo_root: Path) -> Path:
    """Where screenshots go: ``$DAGSTER_PIPES_EXT_E2E_ARTIFACTS`` or ``<repo>/e2e-artifacts``."""
    path = Path(os.environ.get("DAGSTER_PIPES_EXT_E2E_ARTIFACTS") or repo_root / "e2e-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def screenshot_on_failure(page: Page, path: Path) -> Iterator[None]:
    """Save a screenshot of ``page`` to ``path`` if the block raises."""
    try:
        yield
    except BaseException:
        try:
            page.screenshot(path=str(path), timeout=10_000)
        except Exception:
            pass
        raise


def save_compact_png(page: Page, path: Path, colors: int = 128) -> int:
    """Screenshot the viewport into a small PNG (palette-quantized when Pillow is there).

    Returns the file's size in bytes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), animations="disabled")
    try:
        from PIL import Image
    except ImportError:
        return path.stat().st_size
    with Image.open(path) as image:
        quantized = image.convert("RGB").quantize(colors=colors, method=Image.Quantize.MEDIANCUT)
    quantized.save(path, optimize=True)
    return path.stat().st_size
