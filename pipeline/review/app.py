"""The review web app (Starlette): server-rendered pages, a small JSON API, dataset images only.

Images are looked up by photo id in the tables (``/img/photo/<id>``, ``/img/chip/<id>``); no
path from a request ever reaches the file system, so ``../`` or absolute paths cannot escape
the dataset. Verdicts are saved at once (``POST /api/verdicts``, JSON only, so a page on another
site cannot post one) and undone by retracting the exact rows saved (``POST /api/undo``).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from pathlib import Path
from urllib.parse import quote, urlsplit

import numpy as np
import pyarrow as pa
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from pipeline.errors import CrossviewError
from pipeline.review.dataset import QUEUES, Dataset, Index, QueueSpec, Settings, audit_row
from pipeline.review.verdict_table import VerdictError, VerdictTable
from pipeline.verdicts import KEEP, VERDICTS, Verdict

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
LABELS = {"indoor": "drop_indoor", "relevance": "drop_irrelevant"}  # the verdict each model predicts
QUEUE_TITLES = {
    "model_dropped": "Dropped by a model",
    "low_confidence": "Kept, low confidence",
    "kept_sample": "Random sample of kept",
    "reason": "By reason",
    "city": "By city",
    "split": "By split",
    "all": "All photos",
    "suspect_location": "Suspect location (geotag audit)",
}
VERDICT_TITLES = {
    "keep": "Keep",
    "drop_indoor": "Drop: indoor",
    "drop_irrelevant": "Drop: irrelevant",
    "drop_wrong_location": "Drop: wrong location",
}
APPLY = "dvc repro"
MAX_BODY_BYTES = 1 << 20  # a verdict request is a few kB even for a bulk verdict over a 500-item page
PHOTO_FIELDS = ("owner", "owner_name", "licence", "licence_url", "page_url", "date_taken", "accuracy", "lat", "lon")
MAX_PER_PAGE = 500


def image_url(kind: str, photo_id: str, size: str = "thumb") -> str:
    return f"/img/{kind}/{quote(photo_id, safe='')}?size={size}"


def item(ix: Index, p: int, verdict: dict | None) -> dict:
    """What a grid card shows for position ``p``."""
    i = ix.ids[p]
    title = ix.tables["photos"]["title"][p].as_py()
    return {
        "id": i,
        "title": title or "",
        "city": ix.city[p] or "",
        "split": ix.split[p] or "",
        "kept": bool(ix.kept[p]),
        "first_drop": ix.first_drop[p],
        "scores": {m: (None if np.isnan(s[p]) else round(float(s[p]), 4)) for m, s in ix.scores.items()},
        "model_drop": sorted(m for m, d in ix.model_drop.items() if d[p]),
        "margin": None if np.isinf(ix.margin[p]) else round(float(ix.margin[p]), 4),
        "verdict": verdict,
        "photo": image_url("photo", i) if ix.photo_uri[p] else None,
        "chip": image_url("chip", i) if ix.chip_uri[p] else None,
        "audit": audit_item(ix, p),
    }


def _compass(dx: float, dy: float) -> str:
    """The 8-point compass direction of an offset (east dx, north dy)."""
    names = ("N", "NE", "E", "SE", "S", "SW", "W", "NW")
    return names[round(math.degrees(math.atan2(dx, dy)) % 360 / 45) % 8]


def audit_item(ix: Index, p: int) -> dict | None:
    """What the suspect-location card shows of the geotag audit: the best point, margin, its chip and heat map."""
    row = audit_row(ix, p)
    if row is None or row["best_x_m"] is None:
        return None
    dx, dy = row["best_x_m"] - row["x_m"], row["best_y_m"] - row["y_m"]
    i = ix.ids[p]
    return {
        "suspect": bool(row["suspect"]),
        "offset_m": round(row["best_offset_m"], 1),
        "direction": _compass(dx, dy) if row["best_offset_m"] > 0 else "",
        "margin": None if row["margin"] is None else round(row["margin"], 2),
        "grid": f"{row['grid_size']} x {row['grid_size']}, {row['step_m']:g} m apart",
        "best_chip": image_url("best", i),
        "heat": image_url("heat", i),
    }


def _row(ix: Index, table: str, p: int, columns: tuple[str, ...]) -> dict:
    r = ix.rows[table][p] if table in ix.rows else p
    return ix.tables[table].select(list(columns)).slice(int(r), 1).to_pylist()[0] if r >= 0 else {}


def details(ix: Index, p: int, settings: Settings) -> dict:
    """Everything the focus view shows for position ``p``: metadata, every decision, image sizes."""
    photo = _row(ix, "photos", p, PHOTO_FIELDS)
    dl = _row(ix, "downloads", p, ("width", "height", "status", "error"))
    chip = _row(ix, "chips", p, ("width", "height", "nodata_fraction", "status", "error"))
    pair = _row(ix, "pairs", p, ("tile_id", "status", "reason"))
    lo, hi = np.searchsorted(ix.dec_pos, [p, p + 1])
    dec = ix.tables["decisions"].take(pa.array(ix.dec_order[lo:hi])).to_pylist()
    for d in dec:
        d["kind"] = "model" if settings.is_model(d["filter"]) else "rule"
        d.pop("id")
    return {
        "meta": photo,
        "download": dl,
        "chip_info": chip,
        "pair": pair,
        "decisions": dec,
        "edge_m": settings.edge_m,
        "applied": ix.applied.get(ix.ids[p]),
    }


def _int(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    try:
        return min(max(int(request.query_params.get(name, default)), lo), hi)
    except ValueError:
        raise HTTPException(400, f"{name} must be an integer") from None


def _spec(request: Request) -> QueueSpec:
    q = request.query_params
    queue = q.get("queue", "model_dropped")
    if queue not in QUEUES:
        raise HTTPException(400, f"unknown queue {queue!r}: use one of {', '.join(QUEUES)}")
    try:
        margin = float(q.get("margin", 0.2))
    except ValueError:
        raise HTTPException(400, "margin must be a number") from None
    return QueueSpec(
        queue,
        q.get("value", ""),
        margin if math.isfinite(margin) else 0.2,
        _int(request, "seed", 0, 0, 2**31),
        _int(request, "sample", 200, 1, 100_000),
    )


def queue_page(review: Review, request: Request) -> dict:
    """One page of a queue: its items (with the latest verdicts) and paging facts."""
    spec = _spec(request)
    ix, positions = review.dataset.queue(spec)
    reviewed = request.query_params.get("reviewed", "any")
    if reviewed in ("yes", "no"):
        mask = review.reviewed_mask(ix)[positions]
        positions = positions[mask if reviewed == "yes" else ~mask]
    per_page = _int(request, "per_page", 48, 1, MAX_PER_PAGE)
    pages = max(1, -(-len(positions) // per_page))
    page = _int(request, "page", 1, 1, pages)
    latest = review.verdicts.latest()
    chunk = positions[(page - 1) * per_page : page * per_page]
    items = [item(ix, int(p), _verdict(latest.get(ix.ids[p]))) for p in chunk]
    return {
        "queue": spec.queue,
        "value": spec.value,
        "reviewed": reviewed,
        "total": len(positions),
        "page": page,
        "pages": pages,
        "per_page": per_page,
        "items": items,
    }


def _verdict(row: Verdict | None) -> dict | None:
    return row.as_dict() if row else None


def summary(review: Review) -> dict:
    """Reviewed counts, verdicts not yet applied, and each model filter's agreement with curators."""
    ix = review.dataset.index()
    latest = {i: r for i, r in review.verdicts.latest().items() if i in ix.pos}
    pending = sum(ix.applied.get(i) != r.verdict for i, r in latest.items())
    pending += sum(i not in latest for i in ix.applied)
    pos = np.array([ix.pos[i] for i in latest], np.int64)
    labels = np.array([r.verdict for r in latest.values()], object)
    models = {}
    for m in sorted(ix.model_drop):
        judged = ix.judged[m][pos] if len(pos) else np.zeros(0, bool)
        pred = ix.model_drop[m][pos][judged]
        truth = labels[judged] == LABELS[m] if m in LABELS else labels[judged] != KEEP
        tp, fp, fn = int((pred & truth).sum()), int((pred & ~truth).sum()), int((~pred & truth).sum())
        models[m] = {
            "dropped": int(ix.model_drop[m].sum()),
            "reviewed": int(judged.sum()),
            "label": LABELS.get(m, "any drop"),
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "tn": int(judged.sum()) - tp - fp - fn,
            "precision": tp / (tp + fp) if tp + fp else None,
            "recall": tp / (tp + fn) if tp + fn else None,
        }
    return {
        "photos": len(ix.ids),
        "kept": int(ix.kept.sum()),
        "reviewed": len(latest),
        "by_verdict": dict(Counter(r.verdict for r in latest.values())),
        "pending": pending,
        "models": models,
        "apply": APPLY,
        "curator": review.curator,
    }


def _options(ix: Index) -> dict:
    return {
        name: sorted(((v, len(p)) for v, p in ix.groups[name].items()), key=lambda t: (-t[1], t[0]))
        for name in ("reason", "city", "split")
    } | {"model": sorted(ix.model_drop)}


def _scale_bar(edge_m: float) -> tuple[float, float]:
    """A round length near a third of the chip edge, and its share of the edge in percent."""
    nice = [n * 10.0**e for e in range(-1, 5) for n in (1, 2, 2.5, 5)]
    length = max([n for n in nice if n <= edge_m / 3] or [edge_m / 3])
    return length, 100 * length / edge_m


async def _json(request: Request) -> dict:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise HTTPException(415, "send JSON (Content-Type: application/json)")
    try:
        body = await request.json()
    except ValueError:
        raise HTTPException(400, "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise HTTPException(400, "send a JSON object")
    return body


def _ids(body: dict) -> list[str]:
    ids = body.get("ids", [body["id"]] if "id" in body else [])
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise HTTPException(400, "ids must be a list of photo id strings")
    return ids


class Review:
    """The app's state and request handlers: the dataset view, the verdicts table, the curator."""

    def __init__(self, dataset: Dataset, verdicts: VerdictTable, curator: str) -> None:
        self.dataset = dataset
        self.verdicts = verdicts
        self.curator = curator
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self._reviewed: tuple[tuple, np.ndarray] | None = None

    def reviewed_mask(self, ix: Index) -> np.ndarray:
        """True for each photo with a verdict (cached per index and verdicts-file version)."""
        key = (ix.stamp, self.verdicts.stamp())
        if self._reviewed is None or self._reviewed[0] != key:
            mask = np.zeros(len(ix.ids), bool)
            mask[[ix.pos[i] for i in self.verdicts.latest() if i in ix.pos]] = True
            self._reviewed = (key, mask)
        return self._reviewed[1]

    def page(self, request: Request) -> Response:
        data = queue_page(self, request)
        ix = self.dataset.index()
        settings = self.dataset.settings
        scale_m, scale_pct = _scale_bar(settings.edge_m)
        return self.templates.TemplateResponse(
            request,
            "index.html",
            {
                "data": data,
                "summary": summary(self),
                "options": _options(ix),
                "queues": QUEUE_TITLES,
                "verdicts": VERDICT_TITLES,
                "verdict_keys": list(VERDICTS),
                "edge_m": settings.edge_m,
                "scale_m": scale_m,
                "scale_pct": scale_pct,
                "query": dict(request.query_params),
                "thresholds": {m: settings.threshold(m) for m in ix.model_drop},
            },
        )

    def api_queue(self, request: Request) -> Response:
        return JSONResponse(queue_page(self, request))

    def api_pair(self, request: Request) -> Response:
        ix = self.dataset.index()
        photo_id = request.path_params["id"]
        p = ix.pos.get(photo_id)
        if p is None:
            raise HTTPException(404, f"unknown photo id {photo_id!r}: not in the photos table")
        latest = self.verdicts.latest().get(photo_id)
        return JSONResponse(
            {
                **item(ix, p, _verdict(latest)),
                **details(ix, p, self.dataset.settings),
                "history": [r.as_dict() for r in self.verdicts.history(photo_id)],
            }
        )

    async def api_save(self, request: Request) -> Response:
        body = await _json(request)
        note = body.get("note") or ""
        return JSONResponse(await run_in_threadpool(self.save, _ids(body), str(body.get("verdict", "")), str(note)))

    def save(self, ids: list[str], verdict: str, note: str) -> dict:
        self.verdicts.latest()  # a malformed file is reported (CatalogError) before anything is appended
        rows = self.verdicts.append(ids, verdict, self.curator, note, known=self.dataset.index().pos)
        return {"rows": [r.as_dict() for r in rows], "summary": summary(self)}

    async def api_undo(self, request: Request) -> Response:
        rows = (await _json(request)).get("rows")
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise HTTPException(400, "rows must be a list of {id, timestamp, curator} objects")
        keys = [(str(r.get("id")), str(r.get("timestamp")), str(r.get("curator"))) for r in rows]
        return JSONResponse(await run_in_threadpool(self.undo, keys))

    def undo(self, keys: list[tuple[str, str, str]]) -> dict:
        removed = self.verdicts.retract(keys)
        latest = self.verdicts.latest()
        ids = sorted({r.id for r in removed})
        return {
            "removed": len(removed),
            "verdicts": {i: _verdict(latest.get(i)) for i in ids},
            "summary": summary(self),
        }

    def api_summary(self, request: Request) -> Response:
        return JSONResponse(summary(self))

    def image(self, request: Request) -> Response:
        data = self.dataset.image(
            request.path_params["kind"], request.path_params["id"], request.query_params.get("size", "thumb")
        )
        if data is None:
            raise HTTPException(404, "no such image in the dataset")
        media = "image/png" if data[:4] == b"\x89PNG" else "image/jpeg"
        return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=600"})

    async def error(self, request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 400 if isinstance(exc, VerdictError) else 500)
        message = getattr(exc, "detail", None) or str(exc)
        if status >= 500:
            log.error("%s %s: %s", request.method, request.url.path, message)
        if request.url.path.startswith("/api/") or request.method != "GET":
            return JSONResponse({"error": message}, status_code=status)
        return HTMLResponse(f"<!doctype html><title>{status}</title><p>{_escape(message)}</p>", status_code=status)


class RequestLimits:
    """ASGI middleware: request bodies over ``max_bytes`` get 413 (by Content-Length, or while streaming a
    chunked body), and a state-changing request whose ``Origin`` names another host gets 403."""

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES, allowed_hosts: list[str] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.allowed_hosts = allowed_hosts or []

    @staticmethod
    async def _refuse(scope, receive, send, status: int, message: str) -> None:
        await JSONResponse({"error": message}, status_code=status)(scope, receive, send)

    def _origin_ok(self, origin: str) -> bool:
        if "*" in self.allowed_hosts:
            return True
        host = urlsplit(origin).hostname or ""
        host = f"[{host}]" if ":" in host else host
        return host in self.allowed_hosts

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_bytes or int(length) < 0
            except ValueError:
                await self._refuse(scope, receive, send, 400, "Content-Length is not a number")
                return
            if too_big:
                await self._refuse(scope, receive, send, 413, f"request body over {self.max_bytes} bytes")
                return
        origin = headers.get(b"origin")
        if scope["method"] not in ("GET", "HEAD") and origin and not self._origin_ok(origin.decode("latin-1")):
            await self._refuse(scope, receive, send, 403, "a page from another site cannot save verdicts here")
            return
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, f"request body over {self.max_bytes} bytes")
            return message

        await self.app(scope, limited, send)


def build_app(
    dataset: Dataset, verdicts: VerdictTable, curator: str, allowed_hosts: list[str] | None = None
) -> Starlette:
    """The ASGI app over ``dataset`` writing to ``verdicts`` as ``curator``; ``app.state.review`` holds its state."""
    review = Review(dataset, verdicts, curator)
    routes = [
        Route("/", review.page),
        Route("/api/queue", review.api_queue),
        Route("/api/pair/{id:path}", review.api_pair),
        Route("/api/verdicts", review.api_save, methods=["POST"]),
        Route("/api/undo", review.api_undo, methods=["POST"]),
        Route("/api/summary", review.api_summary),
        Route("/img/{kind}/{id:path}", review.image),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    hosts = allowed_hosts or ["127.0.0.1", "localhost", "[::1]"]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(TrustedHostMiddleware, allowed_hosts=hosts),
            Middleware(RequestLimits, allowed_hosts=hosts),
        ],
        exception_handlers={HTTPException: review.error, CrossviewError: review.error},
    )
    app.state.review = review
    return app


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
