"""The web page end to end in headless Chromium (Debian's ``chromium`` driven by Playwright): upload a real
field photo, see five species cards with their herbarium sheets; also at a phone-sized viewport.

Screenshots go to ``test-artifacts/`` (git-ignored) for people to look at.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from herbarium2field.paths import project_root
from tests.test_identify import test_photos
from tests.test_run_contract import bundles, moved  # noqa: F401 (fixtures)
from tests.test_serve import Server

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = project_root() / "test-artifacts"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).is_file() and not shutil.which("chromium"):
        pytest.skip(
            f"headless Chromium not installed at {CHROMIUM} (apt-get install chromium, or `make browser`)"
        )
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium"),
            args=ARGS,
            headless=True,
        )
        yield b
        b.close()


@pytest.fixture(scope="module")
def site(identify_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:  # noqa: F811
    srv = Server(identify_run, tmp_path_factory.mktemp("web") / "server.log")
    yield srv.url
    srv.stop()


def field_photo(aml_sample_dir: Path | None, synth: Path) -> Path:
    if aml_sample_dir is not None:
        photos = sorted((aml_sample_dir / "train" / "photo").rglob("*.jpg"))
        if photos:
            return photos[0]
    return test_photos(synth, 1)[0]


@pytest.fixture
def photo(request: pytest.FixtureRequest, synth_small: Path) -> Path:
    try:
        sample = request.getfixturevalue("aml_sample")
    except pytest.skip.Exception:
        sample = None  # no shared data: a synthetic field photo still exercises the page
    return field_photo(sample, synth_small)


def identify_in_page(page, site: str, photos: list[Path]) -> list[str]:  # type: ignore[no-untyped-def]
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(site + "/")
    page.wait_for_function("document.getElementById('model-info').textContent.includes('species')")
    assert page.locator("#identify").is_disabled()
    page.set_input_files("#file-input", [str(p) for p in photos])
    assert page.locator(".preview img").count() == len(photos)
    page.click("#identify")
    page.wait_for_selector(".result-card", timeout=60_000)
    page.wait_for_function(
        "Array.from(document.querySelectorAll('.result-card .sheet img'))"
        ".every(i => i.complete && i.naturalWidth > 0)",
        timeout=30_000,
    )
    return errors


def test_upload_a_field_photo_and_see_five_species_with_their_sheets(browser, site, photo):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors = identify_in_page(page, site, [photo])
    cards = page.locator(".result-card")
    assert cards.count() == 5
    for i in range(5):
        card = cards.nth(i)
        assert card.locator(".species").inner_text().strip()
        assert card.locator(".pct").inner_text().endswith("%")
        assert card.locator(".sheet img").count() >= 1
    verdict = page.locator("#verdict")
    assert verdict.is_visible() and verdict.inner_text().strip()
    assert not page.locator("#status").is_visible()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web_identify.png"), full_page=True)

    page.locator(".result-card .sheet").first.click()  # enlarge a herbarium sheet
    page.wait_for_selector("#lightbox[open]")
    page.wait_for_function("document.getElementById('lightbox-img').src.endsWith('/full')", timeout=15_000)
    page.screenshot(path=str(ARTIFACTS / "web_lightbox.png"))
    page.keyboard.press("Escape")
    assert errors == []
    page.close()


def test_phone_viewport_and_clear_errors(browser, site, photo, tmp_path):
    page = browser.new_page(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True
    )
    identify_in_page(page, site, [photo, photo])
    assert page.locator(".result-card").count() == 5
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling
    assert page.locator("label[for=camera-input]").is_visible()  # touch screens get the camera button
    assert page.locator("#camera-input").get_attribute("capture") == "environment"
    page.screenshot(path=str(ARTIFACTS / "web_identify_phone.png"), full_page=True)

    page.click("#clear")
    not_a_photo = tmp_path / "notes.jpg"
    not_a_photo.write_text("field notes\n")
    page.set_input_files("#file-input", str(not_a_photo))
    page.click("#identify")
    page.wait_for_selector("#error:not([hidden])")
    message = page.locator("#error").inner_text()
    assert "notes.jpg" in message and "not an image" in message
    assert page.locator(".result-card").count() == 5 and not page.locator("#results").is_visible()
    page.close()


@pytest.fixture(scope="module")
def bundle_site(bundles: dict[str, Path], moved: dict[str, Path],  # noqa: F811
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``h2f serve BUNDLE`` with the run (checkpoint) and its dataset moved out of reach."""
    hidden = moved["run"].with_name("run-hidden-web")
    moved["run"].rename(hidden)
    srv = Server(bundles["folder"], tmp_path_factory.mktemp("web-bundle") / "server.log")
    yield srv.url
    srv.stop()
    hidden.rename(moved["run"])


def test_a_deployed_bundle_serves_the_page_with_its_sheets(browser, bundle_site, photo):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors = identify_in_page(page, bundle_site, [photo])  # waits until every sheet thumbnail has loaded
    assert page.locator(".result-card").count() == 5
    assert page.locator(".result-card .sheet img").count() >= 5
    sizes = page.evaluate("Array.from(document.querySelectorAll('.result-card .sheet img')).map(i => i.naturalWidth)")
    assert min(sizes) > 0
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web_bundle.png"), full_page=True)
    assert errors == []
    page.close()
