"""``h2f serve``: the identification web page and JSON API (FastAPI + uvicorn).

Endpoints: ``POST /api/identify`` (multipart field ``files``, 1-5 photos of one plant), ``GET /api/species``,
``GET /api/species/{class_id}``, ``GET /api/herbarium/{image_id}`` (thumbnail JPEG),
``GET /api/herbarium/{image_id}/full`` (the sheet, 1280 px), ``GET /healthz``; OpenAPI docs at ``/docs``;
the page at ``/``.

Safety: uploads are limited in bytes (per file, and per request while streaming, see ``serve.limits``)
and in pixels (``MAX_PIXELS``, checked on the header before decoding); their type is sniffed from the
content, never the name. Images are served only by gallery id, looked up in the gallery table: no path
sent by a client ever reaches the filesystem. The model is loaded once and shared (see
``run.load`` for how concurrent requests use it). Every bad request gets a 4xx with a plain
``{"detail": "..."}`` message, and the server keeps serving.
"""

import io
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from herbarium2field.data.images import MAX_PIXELS, load_rgb, load_rgb_bytes, sniff_image_type
from herbarium2field.errors import H2FError, ImageError
from herbarium2field.identify.service import Identifier, photo_min_side
from herbarium2field.scoring.combine import COMBINE_METHODS
from herbarium2field.serve.limits import BodySizeLimit

STATIC = Path(__file__).parent / "static"
MAX_FILES = 5
DEFAULT_MAX_UPLOAD_MB = 15.0
FULL_SIDE = 1280
_MULTIPART_OVERHEAD = 64 * 1024


def _short(name: str | None, limit: int = 80) -> str:
    name = (name or "").strip() or "upload"
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _sheet_urls(sheet: dict[str, Any]) -> dict[str, Any]:
    gid = quote(sheet["id"], safe="")
    return {**sheet, "thumbnail_url": f"/api/herbarium/{gid}", "image_url": f"/api/herbarium/{gid}/full"}


def create_app(
    run: str | Path,
    *,
    backend: str = "auto",
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    max_files: int = MAX_FILES,
    threads: int | None = None,
    identifier: Identifier | None = None,
    checklist: str | Path | None = None,
) -> FastAPI:
    """The app for one run; the model, gallery and calibration are loaded here, once. ``checklist``: a file
    restricting every answer to its species (a request's own ``species`` list replaces it)."""
    ident = identifier or Identifier(run, backend=backend, threads=threads, checklist=checklist)
    gallery = ident.gallery
    card = ident.card
    max_bytes = int(max_upload_mb * 1e6)
    data_root = Path(gallery.meta.get("data", {}).get("root", ""))
    names = dict(zip(card.class_ids, card.species, strict=True))
    min_side = photo_min_side(ident.model.pre.input_size)

    app = FastAPI(
        title="herbarium2field",
        version=card.h2f_version,
        summary="Identify plant species in field photos; answers are backed by herbarium sheets.",
        description=f"Model **{card.name}** ({card.kind}, {len(card.class_ids)} species, backend {ident.backend}). "
        f"POST 1 to {max_files} photos of one plant to `/api/identify`.",
        docs_url=None,  # served below from local files: the default page fetches Swagger UI from a CDN
    )
    app.add_middleware(BodySizeLimit, limit=max_files * max_bytes + _MULTIPART_OVERHEAD)

    @app.middleware("http")
    async def _headers(request: Request, call_next):  # type: ignore[no-untyped-def]
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        if request.url.path == "/api/identify" and any(
            "files" in map(str, e.get("loc", ())) for e in exc.errors()
        ):
            msg = f"send 1 to {max_files} photos as multipart form field 'files'"
        else:
            msg = "; ".join(
                f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg')}"
                for e in exc.errors()
            )
        return JSONResponse({"detail": msg}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _mount_docs(app)

    @app.get("/healthz", tags=["service"])
    def healthz() -> dict[str, Any]:
        """Liveness and what is loaded."""
        return {
            "status": "ok",
            "run": card.name,
            "kind": card.kind,
            "backend": ident.backend,
            "species": len(card.class_ids),
            "herbarium_sheets": len(gallery),
            "calibrated": ident.calibration is not None,
            "threshold": ident.threshold(),
            "genus_threshold": ident.genus_threshold(),
            "ranking": ident.model.choice.describe() if ident.model.choice else "ranked by the classifier",
            "checklist": ident.checklist.describe() if ident.checklist is not None else None,
            "limits": {"max_files": max_files, "max_upload_mb": max_upload_mb, "max_pixels": MAX_PIXELS},
        }

    @app.post("/api/identify", tags=["identify"])
    def identify(
        files: Annotated[list[UploadFile], File(description=f"1 to {max_files} photos of one plant")],
        top_k: Annotated[int, Query(ge=1, le=50)] = 5,
        sheets: Annotated[int, Query(ge=0, le=12)] = 3,
        combine: Annotated[str, Query(description=" | ".join(COMBINE_METHODS))] = "probabilities",
        species: Annotated[list[str] | None, Query(
            description="restrict the candidates to these species (class ids or names; repeat the parameter)")] = None,
    ) -> dict[str, Any]:
        """Identify one plant from its photos: top-k species, each with its best-matching herbarium sheets."""
        if combine not in COMBINE_METHODS:
            raise HTTPException(422, f"combine must be one of {', '.join(COMBINE_METHODS)}")
        if not files:
            raise HTTPException(422, f"send 1 to {max_files} photos as multipart form field 'files'")
        if len(files) > max_files:
            raise HTTPException(400, f"{len(files)} photos sent: at most {max_files} per request")
        images, photo_names = [], []
        for f in files:
            name = _short(f.filename)
            data = f.file.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise HTTPException(413, f"{name}: the photo is larger than {max_upload_mb:g} MB")
            if not data:
                raise HTTPException(400, f"{name}: the file is empty (0 bytes)")
            try:
                images.append(load_rgb_bytes(data, name, min_side=min_side))
            except ImageError as exc:
                status = 415 if sniff_image_type(data[:32]) is None else 400
                raise HTTPException(status, f"{name}: {exc.message}") from None
            except MemoryError:
                raise HTTPException(413, f"{name}: the image is too large to decode") from None
            photo_names.append(name)
        try:
            checklist = ident.checklist_of(species) if species else None
        except H2FError as exc:
            raise HTTPException(422, exc.message) from None
        answer = ident.identify(images, photo_names, top_k=top_k, sheets=sheets, method=combine, checklist=checklist)
        for r in answer["results"]:
            r["herbarium"] = [_sheet_urls(s) for s in r["herbarium"]]
        answer["nearest_sheets"] = [_sheet_urls(s) for s in answer["nearest_sheets"]]
        return answer

    @app.get("/api/species", tags=["species"])
    def species() -> list[dict[str, Any]]:
        """Every species the model knows, with its number of herbarium sheets."""
        out = []
        for cid in card.class_ids:
            rows = gallery.species_sheets(cid)
            out.append(
                {
                    "class_id": cid,
                    "species": names[cid],
                    "with_pairs": cid in ident.with_pairs,
                    "sheets": len(rows),
                    "thumbnail_url": f"/api/herbarium/{quote(rows.gallery_id.iloc[0], safe='')}"
                    if len(rows)
                    else None,
                }
            )
        return out

    @app.get("/api/species/{class_id}", tags=["species"])
    def species_detail(class_id: str) -> dict[str, Any]:
        """One species: name and its herbarium sheets (thumbnail and full-size URLs)."""
        if class_id not in names:
            raise HTTPException(404, "unknown species id")
        rows = gallery.species_sheets(class_id)
        return {
            "class_id": class_id,
            "species": names[class_id],
            "with_pairs": class_id in ident.with_pairs,
            "herbarium": [
                _sheet_urls({"id": r.gallery_id, "image_id": r.image_id, "path": r.path})
                for r in rows.itertuples()
            ],
        }

    @app.get(
        "/api/herbarium/{image_id}",
        tags=["herbarium"],
        responses={200: {"content": {"image/jpeg": {}}}, 404: {"description": "not a gallery sheet"}},
    )
    def herbarium_thumbnail(image_id: str) -> Response:
        """The thumbnail of a gallery sheet (JPEG, long side 256 px)."""
        data = gallery.thumbnail(image_id)
        if data is None:
            raise HTTPException(404, "no such herbarium sheet")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=86400"})

    @app.get(
        "/api/herbarium/{image_id}/full",
        tags=["herbarium"],
        responses={200: {"content": {"image/jpeg": {}}}, 404: {"description": "not a gallery sheet"}},
    )
    def herbarium_full(image_id: str) -> Response:
        """The sheet itself, long side 1280 px, read from the dataset the gallery was built from; where that
        dataset is not on this server (a deployed bundle), the stored thumbnail."""
        row = gallery.row_of.get(image_id)
        if row is None:
            raise HTTPException(404, "no such herbarium sheet")
        root = data_root.resolve()
        path = (root / gallery.table.path.iloc[row]).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            return herbarium_thumbnail(image_id)
        try:
            img = load_rgb(path, min_side=FULL_SIDE // 2)
        except ImageError:
            raise HTTPException(404, "the sheet's image cannot be read") from None
        img.thumbnail((FULL_SIDE, FULL_SIDE))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=88)
        return Response(
            buf.getvalue(), media_type="image/jpeg", headers={"Cache-Control": "public, max-age=86400"}
        )

    return app


def run_server(
    run: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    backend: str = "auto",
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    threads: int | None = None,
    checklist: str | Path | None = None,
) -> None:
    """Load the run and serve it with uvicorn until interrupted."""
    import uvicorn
    from rich.console import Console

    console = Console(stderr=True)
    app = create_app(run, backend=backend, max_upload_mb=max_upload_mb, threads=threads, checklist=checklist)
    if host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[yellow]note:[/yellow] listening on {host}: reachable from other machines")
    shown = f"[{host}]" if ":" in host else host
    console.print(f"serving [bold]{run}[/bold] at http://{shown}:{port}/ (API docs at /docs); Ctrl-C stops")
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_keep_alive=5, server_header=False)


def _mount_docs(app: FastAPI) -> None:
    """OpenAPI docs at ``/docs`` that work without internet: Swagger UI's files come from the
    ``swagger-ui-bundle`` package instead of a CDN (the botanist's laptop in the field has no network)."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/_swagger", StaticFiles(directory=swagger_ui_path), name="swagger")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title="herbarium2field API",
                                   swagger_js_url="/_swagger/swagger-ui-bundle.js",
                                   swagger_css_url="/_swagger/swagger-ui.css",
                                   swagger_favicon_url="/_swagger/favicon-32x32.png")
