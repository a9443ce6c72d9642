"""The web page end to end in headless Chromium (Debian's ``chromium`` driven by Playwright): upload a real
field photo, see five species cards with their herbarium sheets; also at a phone-sized viewport.

Screenshots go to ``test-artifacts/`` (git-ignored) for people to look at.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from herbarium2field.paths import project_root
from tests.conftest import missing, require_module
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
        missing(f"headless Chromium not installed at {CHROMIUM} (apt-get install chromium, or `make browser`)")
    sync_api = require_module("playwright.sync_api", "Playwright for Python")
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
    except pytest.skip.Exception:  # (under CI a missing sample fails instead)
        sample = None  # no shared data: a synthetic field photo still exercises the page
    return field_photo(sample, synth_small)


def watch_errors(page) -> list[str]:  # type: ignore[no-untyped-def]
    """JavaScript exceptions and console errors of ``page`` from now on (the list fills as they happen)."""
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    page.on("console", lambda msg: errors.append(f"console.{msg.type}: {msg.text}")
            if msg.type in ("error", "warning") else None)
    return errors


def pct(x: float) -> str:
    """The page's percentage (app.js ``pct``): whole percent at the ends of the range, else one decimal."""
    return f"{x * 100:.{0 if x >= 0.995 or x < 0.001 else 1}f}%"


def api_answer(site: str, photos: list[Path]) -> dict:
    """What the page's own request (``/api/identify?top_k=5&sheets=4``) answers for these photos."""
    files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in photos]
    r = httpx.post(f"{site}/api/identify", params={"top_k": 5, "sheets": 4}, files=files, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def assert_cards_show(page, answer: dict) -> None:  # type: ignore[no-untyped-def]
    """The result cards name the API's species, in its order, with its percentages."""
    cards = page.locator(".result-card")
    assert cards.count() == len(answer["results"]) == 5
    shown = [(cards.nth(i).locator(".species").inner_text().strip(), cards.nth(i).locator(".pct").inner_text().strip())
             for i in range(cards.count())]
    assert shown == [(r["species"], pct(r["score"])) for r in answer["results"]]


def verdict_title(answer: dict) -> str:
    """The verdict's heading for an API answer: the species, the genus, or the "no confident match" state."""
    if answer["confident"] is True:
        return answer["results"][0]["species"]
    if (answer.get("answer") or {}).get("level") == "genus":
        return answer["answer"]["name"]
    return "No confident match" if answer["confident"] is False else "Most likely species"


def identify_in_page(page, site: str, photos: list[Path]) -> list[str]:  # type: ignore[no-untyped-def]
    errors = watch_errors(page)
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
    answer = api_answer(site, [photo])
    assert_cards_show(page, answer)
    cards = page.locator(".result-card")
    for i, r in enumerate(answer["results"]):  # each card's sheets are the API's sheets of that species
        shown = cards.nth(i).locator(".sheet img").evaluate_all("imgs => imgs.map(i => new URL(i.src).pathname)")
        assert shown == [s["thumbnail_url"] for s in r["herbarium"]] and shown
    verdict = page.locator("#verdict")
    assert verdict.is_visible() and verdict.locator("h2").inner_text().strip() == verdict_title(answer)
    g = answer["genus"]  # the genus line: the API's genus, its score (sum of its species'), its species count
    line = " ".join(page.locator("#genus-line").inner_text().split())
    assert line == (f"Genus: {g['name']} {pct(g['score'])}" + (f" · family {g['family']}" if g["family"] else "")
                    + f" · {len(g['species'])} species of this genus known to the model")
    assert page.locator("#genus-line em").inner_text() == g["name"]
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
    errors = identify_in_page(page, site, [photo, photo])
    assert_cards_show(page, api_answer(site, [photo, photo]))  # two photos of one plant: one combined answer
    assert errors == []
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
    # the only console error is the browser's own line for the refused upload (HTTP 415): no JavaScript error
    assert [e for e in errors if "status of 415" not in e] == [], errors
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
    assert_cards_show(page, api_answer(bundle_site, [photo]))
    assert page.locator(".result-card .sheet img").count() >= 5
    sizes = page.evaluate("Array.from(document.querySelectorAll('.result-card .sheet img')).map(i => i.naturalWidth)")
    assert min(sizes) > 0
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web_bundle.png"), full_page=True)
    assert errors == []
    page.close()
