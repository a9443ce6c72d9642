"""The HTTP API against a real ``h2f serve`` (uvicorn) on a free localhost port: good photos, odd and
hostile uploads, path traversal; the server must answer each bad request with a plain 4xx and keep serving.
"""

from __future__ import annotations

import io
import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.test_identify import test_photos


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``h2f serve RUN`` as a child process; ``url`` once ``/healthz`` answers."""

    def __init__(self, run: Path, log: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {**os.environ, "OMP_NUM_THREADS": "2"}
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "herbarium2field", "serve", str(run), "--port", str(self.port), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"h2f serve exited with {self.proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"h2f serve did not come up in time:\n{log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def server(identify_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:  # noqa: F811
    srv = Server(identify_run, tmp_path_factory.mktemp("serve") / "server.log")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def jpeg_bytes(
    color: tuple[int, int, int] = (90, 140, 60), size: tuple[int, int] = (300, 400), mode: str = "RGB"
) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color if mode == "RGB" else (40, 10, 80, 20)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png_bomb_header(width: int = 30_000, height: int = 30_000) -> bytes:
    """A tiny PNG whose header claims width x height pixels (written by hand)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def upload(client: httpx.Client, *files: tuple[str, bytes], **params: object) -> httpx.Response:
    return client.post(
        "/api/identify", files=[("files", (name, data, "image/jpeg")) for name, data in files], params=params
    )


def assert_still_serving(client: httpx.Client) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    r = upload(client, ("ok.jpg", jpeg_bytes()))
    assert r.status_code == 200 and len(r.json()["results"]) == 5


# ---- good requests -----------------------------------------------------------------------------------


def test_health_species_and_docs(client, identify_run):  # noqa: F811
    h = client.get("/healthz").json()
    assert h["status"] == "ok" and h["species"] == 6 and h["herbarium_sheets"] > 0 and h["backend"] == "torch"
    assert h["limits"]["max_files"] == 5 and h["calibrated"]
    species = client.get("/api/species").json()
    assert len(species) == 6 and all(s["sheets"] > 0 for s in species)
    one = client.get(f"/api/species/{species[0]['class_id']}").json()
    assert one["species"] == species[0]["species"] and len(one["herbarium"]) == species[0]["sheets"]
    thumb = client.get(one["herbarium"][0]["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).format == "JPEG"
    full = client.get(one["herbarium"][0]["image_url"])
    assert full.status_code == 200 and full.headers["content-type"] == "image/jpeg"
    assert client.get("/api/species/0000").status_code == 404
    assert client.get("/openapi.json").json()["paths"]["/api/identify"]["post"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "cdn." not in docs.text  # works offline
    assert client.get("/_swagger/swagger-ui-bundle.js").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and 'capture="environment"' in page.text
    assert client.get("/static/app.js").status_code == 200


def test_identify_synthetic_photos(client, synth_small):
    photos = test_photos(synth_small, 2)
    r = upload(client, *[(p.name, p.read_bytes()) for p in photos], top_k=3)
    assert r.status_code == 200, r.text
    ans = r.json()
    assert [p["name"] for p in ans["photos"]] == [p.name for p in photos] and len(ans["results"]) == 3
    for res in ans["results"]:
        assert res["herbarium"] and all(s["class_id"] == res["class_id"] for s in res["herbarium"])
        for s in res["herbarium"]:
            assert client.get(s["thumbnail_url"]).status_code == 200
    assert_confidence_rule(ans)


def assert_confidence_rule(ans: dict) -> None:
    """``confident`` is exactly "the top score reaches the calibrated threshold" (False when the calibration
    found no threshold, None when the run has no calibration), and the message says which."""
    threshold, top = ans["threshold"], ans["results"][0]
    assert ans["message"]
    if threshold is None:
        assert ans["confident"] is None and "no confidence threshold" in ans["message"]
    elif threshold["value"] is None:
        assert ans["confident"] is False and "never reaches" in ans["message"]
    else:
        assert abs(top["score"] - threshold["value"]) > 1e-4  # scores are rounded to 4 places in the answer
        assert ans["confident"] is (top["score"] >= threshold["value"])
        if ans["confident"]:
            assert ans["message"].startswith(top["species"]) and ans["answer"]["name"] == top["species"]
        elif ans["answer"]["level"] == "none":
            assert "below the threshold" in ans["message"]


def test_confident_is_the_top_score_against_the_threshold(identify_run, synth_small):
    """The rule itself, on the real model and photo, with the run's calibration replaced by thresholds just
    below and just above the photo's top score, one that reaches no precision target, and none at all."""
    from herbarium2field.data.images import load_rgb
    from herbarium2field.identify.service import Identifier

    ident = Identifier(identify_run, backend="torch")
    photo = load_rgb(test_photos(synth_small, 1)[0], min_side=ident.min_side)
    base = {"n": 20, "precision": 0.9, "coverage": 0.5, "target_precision": 0.9}

    def ask(calibration: dict | None) -> dict:
        ident.calibration = calibration
        return ident.identify([photo], ["p.jpg"], top_k=3, sheets=0)

    top = ask(None)["results"][0]["score"]
    below = ask({**base, "threshold": top - 1e-3, "reached": True})
    above = ask({**base, "threshold": top + 1e-3, "reached": True})
    unreachable = ask({**base, "threshold": None, "reached": False})
    uncalibrated = ask(None)
    assert below["confident"] is True and below["answer"] == {"level": "species", "name": below["results"][0]["species"],
                                                              "score": pytest.approx(top, abs=1e-4)}
    assert above["confident"] is False and "below the threshold" in above["message"]
    assert unreachable["confident"] is False and "never reaches 90% precision" in unreachable["message"]
    assert uncalibrated["confident"] is None and uncalibrated["threshold"] is None
    for ans in (below, above, unreachable, uncalibrated):
        assert_confidence_rule(ans)
        assert [r["score"] for r in ans["results"]] == [r["score"] for r in below["results"]]  # ranking unchanged


def test_identify_real_field_photo(client, aml_sample):
    photo = sorted((aml_sample / "train" / "photo").rglob("*.jpg"))[0]
    r = upload(client, (photo.name, photo.read_bytes()))
    assert r.status_code == 200, r.text
    assert len(r.json()["results"]) == 5


def test_cmyk_jpeg_and_png_named_jpg_work(client):
    cmyk = jpeg_bytes(mode="CMYK")
    assert Image.open(io.BytesIO(cmyk)).mode == "CMYK"
    assert upload(client, ("cmyk.jpg", cmyk)).status_code == 200
    buf = io.BytesIO()
    Image.new("RGBA", (200, 200), (10, 200, 10, 128)).save(buf, "PNG")
    assert upload(client, ("actually_a_png.jpg", buf.getvalue())).status_code == 200


def test_concurrent_requests_get_the_same_answers(client, synth_small):
    photos = [p.read_bytes() for p in test_photos(synth_small, 4)]
    want = [upload(client, ("p.jpg", photos[i])).json()["results"] for i in range(4)]

    def one(i: int) -> list:
        with httpx.Client(base_url=str(client.base_url), timeout=60) as c:
            r = upload(c, ("p.jpg", photos[i % 4]))
            assert r.status_code == 200
            return r.json()["results"]

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(one, range(16)))
    for i, results in enumerate(got):
        assert [x["class_id"] for x in results] == [x["class_id"] for x in want[i % 4]]
        assert [x["score"] for x in results] == pytest.approx([x["score"] for x in want[i % 4]], abs=1e-4)


# ---- bad requests: a plain 4xx each, and the server keeps serving ---------------------------------


@pytest.mark.parametrize(
    ("name", "data", "status", "words"),
    [
        ("notes.jpg", b"these are my field notes, not a photo\n", 415, "not an image"),
        ("page.jpg", b"<!doctype html><html><body>404</body></html>", 415, "HTML"),
        ("truncated.jpg", jpeg_bytes()[:400], 400, "truncated"),
        ("bomb.png", png_bomb_header(), 400, "too large"),
        ("empty.jpg", b"", 400, "empty"),
        ("heic.jpg", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", 415, "HEIC"),
    ],
)
def test_bad_uploads_get_a_plain_4xx(client, name, data, status, words):
    r = upload(client, (name, data))
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], str)
    assert name in body["detail"] and words.lower() in body["detail"].lower()
    assert_still_serving(client)


def test_bad_requests_get_a_plain_4xx(client):
    good = ("ok.jpg", jpeg_bytes())
    six = upload(client, *[good] * 6)
    assert six.status_code == 400 and "at most 5" in six.json()["detail"]
    none = client.post("/api/identify")
    assert none.status_code == 422 and "files" in none.json()["detail"]
    text_field = client.post("/api/identify", data={"files": "hello"})
    assert text_field.status_code == 422 and isinstance(text_field.json()["detail"], str)
    too_big = upload(client, ("big.jpg", b"\xff\xd8\xff" + os.urandom(16_000_000)))
    assert too_big.status_code == 413 and "15 MB" in too_big.json()["detail"]
    assert upload(client, good, top_k=0).status_code == 422
    assert upload(client, good, combine="vote").status_code == 422
    assert_still_serving(client)


def test_huge_streamed_body_is_cut_off(client):
    def body() -> Iterator[bytes]:  # chunked: no Content-Length to refuse up front; a valid form start
        yield (
            b'--zzz\r\nContent-Disposition: form-data; name="files"; filename="endless.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n\xff\xd8\xff"
        )
        for _ in range(100):
            yield b"x" * 1_000_000

    r = client.post(
        "/api/identify", content=body(), headers={"content-type": "multipart/form-data; boundary=zzz"}
    )
    assert r.status_code == 413 and "too large" in r.json()["detail"]
    assert_still_serving(client)


@pytest.mark.parametrize(
    "path",
    [
        "/api/herbarium/..%2F..%2Fetc%2Fpasswd",
        "/api/herbarium/..%2F..%2Fetc%2Fpasswd/full",
        "/api/herbarium/%2Fetc%2Fpasswd",
        "/api/herbarium/thumbs.bin",
        "/api/herbarium/..",
        "/static/..%2F..%2F..%2Fetc%2Fpasswd",
        "/static/../app.py",
    ],
)
def test_path_traversal_finds_nothing(client, path):
    r = client.get(httpx.URL(client.base_url.join("/")).copy_with(raw_path=path.encode()))
    assert r.status_code == 404, (path, r.status_code, r.text[:200])
    assert "root:" not in r.text


def test_onnx_backend_server_gives_the_same_answer(client, identify_run, synth_small, tmp_path):  # noqa: F811
    photo = test_photos(synth_small, 1)[0]
    srv = Server(identify_run, tmp_path / "onnx.log", "--backend", "onnx")
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            assert c.get("/healthz").json()["backend"] == "onnx"
            got = upload(c, (photo.name, photo.read_bytes())).json()
    finally:
        srv.stop()
    want = upload(client, (photo.name, photo.read_bytes())).json()
    assert [r["class_id"] for r in got["results"]] == [r["class_id"] for r in want["results"]]
    assert [r["score"] for r in got["results"]] == pytest.approx(
        [r["score"] for r in want["results"]], abs=1e-4
    )
