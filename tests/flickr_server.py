"""A Flickr-protocol REST server on loopback, written from the published API facts (not from our client).

What it speaks (see ../shared/reference/FLICKR_SPACENET_FACTS.md §2-§3):

- ``POST`` (or ``GET``) to ``/services/rest/`` with form-encoded params; the key comes as
  ``api_key`` or, as flickrapi 2.4 sends it, as ``oauth_consumer_key`` in an
  ``Authorization: OAuth ...`` header whose HMAC-SHA1 signature is checked against the key's
  secret (code 96 when it does not match, code 100 for an unknown key).
- ``format=json`` answers JSONP ``jsonFlickrApi(...)``, plain JSON with ``nojsoncallback=1``;
  ``stat: ok`` or ``{"stat": "fail", "code": <number>, "message": ...}``. Other formats answer
  code 111 (this server only speaks JSON).
- ``flickr.photos.search`` over a seeded population (:func:`make_population`): bbox (inclusive
  on every edge), has_geo, license, min/max_upload_date (unix or MySQL datetime, inclusive),
  accuracy (treated as a minimum: photos at least that accurate), privacy_filter (unauthenticated
  callers only ever see public photos), content_type, media, sort (date-posted-asc|desc, default
  desc; other sorts fall back to desc), extras (whitespace stripped), per_page (default 100, max
  500, max 250 for bbox queries), page. ``total`` is the full match count and ``pages`` counts
  pages of it, but only the first 4,000 results are reachable: a page past the cap answers the
  last reachable page again (Flickr is reported to repeat results there); a page past ``pages``
  answers an empty list. A bbox query without a limiting agent (dates, tags, text, user) sees
  only the last 12 hours' uploads; a search with no criteria at all answers code 3; a malformed
  or inverted bbox answers code 18 (Illogical arguments; our choice, Flickr does not document it).
- Type drift as in real captures: ``total``/``pages`` as string or number, latitude/longitude,
  accuracy and width/height as string or number.
- ``flickr.photos.licenses.getInfo``: the 17 licences (0-16) as recorded 2025-06-19, out of
  numeric order. Unknown methods answer code 112.
- Fault injection: :class:`Fault` per call number (``schedule``) or on every call (``always``):
  ``stat=fail`` codes, HTTP status (5xx, 429, 400), slow responses, non-JSON bodies, empty pages; a global
  ``delay_s``; a per-second rate limit answering HTTP 429. Every call is logged in ``calls``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import math
import random
import re
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import numpy as np

SEARCH_CAP = 4000
LICENCES = [  # flickr.photos.licenses.getInfo, recorded 2025-06-19 (ids out of numeric order, as Flickr lists them)
    (0, "All Rights Reserved", "https://www.flickrhelp.com/hc/en-us/articles/10710266545556-Using-Flickr-images-shared-by-other-members"),
    (4, "CC BY 2.0", "https://creativecommons.org/licenses/by/2.0/"),
    (6, "CC BY-ND 2.0", "https://creativecommons.org/licenses/by-nd/2.0/"),
    (3, "CC BY-NC-ND 2.0", "https://creativecommons.org/licenses/by-nc-nd/2.0/"),
    (2, "CC BY-NC 2.0", "https://creativecommons.org/licenses/by-nc/2.0/"),
    (1, "CC BY-NC-SA 2.0", "https://creativecommons.org/licenses/by-nc-sa/2.0/"),
    (5, "CC BY-SA 2.0", "https://creativecommons.org/licenses/by-sa/2.0/"),
    (7, "No known copyright restrictions", "https://www.flickr.com/commons/usage/"),
    (8, "United States Government Work", "https://www.usa.gov/government-copyright"),
    (9, "Public Domain Dedication (CC0)", "https://creativecommons.org/publicdomain/zero/1.0/"),
    (10, "Public Domain Mark", "https://creativecommons.org/publicdomain/mark/1.0/"),
    (11, "CC BY 4.0", "https://creativecommons.org/licenses/by/4.0/"),
    (12, "CC BY-SA 4.0", "https://creativecommons.org/licenses/by-sa/4.0/"),
    (13, "CC BY-ND 4.0", "https://creativecommons.org/licenses/by-nd/4.0/"),
    (14, "CC BY-NC 4.0", "https://creativecommons.org/licenses/by-nc/4.0/"),
    (15, "CC BY-NC-SA 4.0", "https://creativecommons.org/licenses/by-nc-sa/4.0/"),
    (16, "CC BY-NC-ND 4.0", "https://creativecommons.org/licenses/by-nc-nd/4.0/"),
]
# extras size key -> (URL suffix, longest side px); url_m is the 500 px size with no suffix.
SIZES = {"url_t": ("t", 100), "url_s": ("m", 240), "url_n": ("n", 320), "url_m": ("", 500), "url_z": ("z", 640),
         "url_c": ("c", 800), "url_l": ("b", 1024)}
LIMITING = ("min_upload_date", "max_upload_date", "min_taken_date", "max_taken_date", "tags", "text", "user_id",
            "group_id", "machine_tags")
CRITERIA = LIMITING + ("bbox", "license", "has_geo", "woe_id", "place_id", "lat", "lon")


# ---------------------------------------------------------------- population


@dataclass
class Photo:
    """One photo as Flickr stores it (typed; rendered with Flickr's string/number drift)."""

    id: int
    owner: str
    ownername: str
    pathalias: str | None
    secret: str
    server: str
    title: str
    description: str
    license: int
    dateupload: int
    datetaken: str
    lat: float | None  # None: not geotagged
    lon: float | None
    accuracy: int
    context: int
    woeid: str
    tags: str
    o_width: int
    o_height: int
    originalsecret: str | None  # None: the owner hides originals
    ispublic: int = 1
    media: str = "photo"
    content_type: int = 1
    drift: int = 0  # seeded bits choosing string or number rendering per field
    decoy: str = ""  # why a test harvest must not return it ("" = it must)


def _ts(year: int, month: int = 1, day: int = 1) -> int:
    return int(datetime(year, month, day, tzinfo=UTC).timestamp())


def make_population(
    n: int,
    bbox: tuple[float, float, float, float] = (2.25, 48.80, 2.45, 48.92),
    *,
    seed: int = 0,
    upload_range: tuple[int, int] = (_ts(2008), _ts(2023) - 1),
    min_accuracy: int = 6,
    hotspot_fraction: float = 0.25,
    hotspot_deg: float = 0.0002,
    decoys: bool = True,
) -> list[Photo]:
    """``n`` photos a harvest of ``bbox`` / ``upload_range`` / licences 1-16 / ``min_accuracy`` must return,
    plus (``decoys``) photos it must not: licence 0, private, videos, screenshots, low accuracy, outside
    the bbox or the date range, not geotagged. A ``hotspot_fraction`` of them sits in one tiny square,
    denser than Flickr's cap, so the harvest has to split by date too."""
    rng = random.Random(seed)
    w, s, e, n_ = bbox
    kinds = [""] * n
    if decoys:
        k = max(20, n // 40)
        kinds += ["licence0"] * k + ["private"] * k + ["video"] * k + ["screenshot"] * k + ["accuracy"] * k
        kinds += ["outside_bbox"] * k + ["too_old"] * k + ["too_new"] * k + ["no_geo"] * k
    cx, cy = rng.uniform(w + (e - w) * 0.3, w + (e - w) * 0.7), rng.uniform(s + (n_ - s) * 0.3, s + (n_ - s) * 0.7)
    clusters = [(rng.uniform(w, e), rng.uniform(s, n_)) for _ in range(5)]
    photos = []
    for i, kind in enumerate(kinds):
        pick = rng.random()
        if pick < hotspot_fraction:  # one spot denser than Flickr's cap: only a date split reaches all of it
            lon, lat = cx + rng.uniform(0, hotspot_deg), cy + rng.uniform(0, hotspot_deg)
        elif pick < hotspot_fraction + 0.3:  # a few landmarks
            c = rng.choice(clusters)
            lon, lat = min(max(rng.gauss(c[0], 0.004), w), e), min(max(rng.gauss(c[1], 0.004), s), n_)
        else:
            lon, lat = rng.uniform(w, e), rng.uniform(s, n_)
        upload = rng.randint(upload_range[0], upload_range[1])
        photos.append(_photo(i, kind, lon, lat, upload, bbox, upload_range, min_accuracy, rng))
    photos.sort(key=lambda p: (p.dateupload, p.owner))
    next_id = rng.randint(2_000_000_000, 3_000_000_000)
    for p in photos:  # Flickr ids grow with upload time
        next_id += rng.randint(1, 4000)
        p.id = next_id
    return photos


def _photo(i, kind, lon, lat, upload, bbox, upload_range, min_accuracy, rng) -> Photo:
    _, _, e, n = bbox
    licence, public, media, ctype = rng.randint(1, 16), 1, "photo", 1
    accuracy = rng.randint(min_accuracy, 16)
    if kind == "licence0":
        licence = 0
    elif kind == "private":
        public = 0
    elif kind == "video":
        media = "video"
    elif kind == "screenshot":
        ctype = 2
    elif kind == "accuracy":
        accuracy = rng.randint(1, min_accuracy - 1) if min_accuracy > 1 else 1
    elif kind == "outside_bbox":
        lon, lat = e + rng.uniform(0.001, 0.05), n + rng.uniform(0.001, 0.05)
    elif kind == "too_old":
        upload = rng.randint(upload_range[0] - 3 * 365 * 86400, upload_range[0] - 1)
    elif kind == "too_new":
        upload = rng.randint(upload_range[1] + 1, upload_range[1] + 365 * 86400)
    long_side = rng.choice([640, 800, 1024, 1600, 2048, 4000, 6000])
    short = int(long_side * rng.uniform(0.5, 0.8))
    wide = rng.random() < 0.7
    owner_n = rng.randint(1, 799)
    taken = datetime.fromtimestamp(upload - rng.randint(0, 400 * 86400), tz=UTC)
    return Photo(
        id=0, owner=f"{10_000_000 + owner_n * 7919}@N0{owner_n % 8}", ownername=f"user {owner_n}",
        pathalias=f"alias{owner_n}" if owner_n % 3 == 0 else None,
        secret=f"{rng.getrandbits(40):010x}", server=str(rng.randint(1000, 65535)),
        title=["", "Street", "Café du coin", f"IMG_{i:04d}", "façade"][i % 5], description=["", "A walk"][i % 2],
        license=licence, dateupload=upload, datetaken=taken.strftime("%Y-%m-%d %H:%M:%S"),
        lat=None if kind == "no_geo" else round(lat, 6), lon=None if kind == "no_geo" else round(lon, 6),
        accuracy=accuracy, context=rng.randint(0, 2), woeid=str(rng.randint(600000, 699999)),
        tags=["", "paris street", "architecture"][i % 3], o_width=long_side if wide else short,
        o_height=short if wide else long_side,
        originalsecret=f"{rng.getrandbits(40):010x}" if rng.random() < 0.6 else None,
        ispublic=public, media=media, content_type=ctype, drift=rng.getrandbits(8), decoy=kind,
    )


def expected_ids(photos: list[Photo]) -> set[str]:
    """Ids a harvest of the generated bbox, date range, licences 1-16 and min accuracy must return."""
    return {str(p.id) for p in photos if not p.decoy}


# ---------------------------------------------------------------- rendering


def _drift(p: Photo, bit: int, value):
    """Render a number as a string or as a number, as captured responses do."""
    return str(value) if (p.drift >> bit) & 1 else value


def _size(p: Photo, side: int) -> tuple[int, int]:
    scale = side / max(p.o_width, p.o_height)
    return round(p.o_width * scale), round(p.o_height * scale)


def render(p: Photo, extras: set[str], image_base: str) -> dict:
    d = {"id": str(p.id), "owner": p.owner, "secret": p.secret, "server": p.server, "farm": 66, "title": p.title,
         "ispublic": p.ispublic, "isfriend": 0, "isfamily": 0}
    if "license" in extras:
        d["license"] = str(p.license)
    if "description" in extras:
        d["description"] = {"_content": p.description}
    if "date_upload" in extras:
        d["dateupload"] = str(p.dateupload)
    if "date_taken" in extras:
        d.update(datetaken=p.datetaken, datetakengranularity=_drift(p, 5, 0), datetakenunknown="0")
    if "owner_name" in extras:
        d["ownername"] = p.ownername
    if "last_update" in extras:
        d["lastupdate"] = str(p.dateupload + 3600)
    if "original_format" in extras and p.originalsecret:
        d.update(originalsecret=p.originalsecret, originalformat="jpg")
    if "geo" in extras and p.lat is not None:
        d.update(latitude=_drift(p, 0, p.lat), longitude=_drift(p, 1, p.lon), accuracy=_drift(p, 2, p.accuracy),
                 context=p.context, place_id=f"pl{p.woeid}", woeid=p.woeid, geo_is_public=1, geo_is_contact=0,
                 geo_is_friend=0, geo_is_family=0)
    if "tags" in extras:
        d["tags"] = p.tags
    if "machine_tags" in extras:
        d["machine_tags"] = ""
    if "o_dims" in extras and p.originalsecret:
        d.update(o_width=_drift(p, 3, p.o_width), o_height=_drift(p, 3, p.o_height))
    if "media" in extras:
        d.update(media=p.media, media_status="ready")
    if "path_alias" in extras:
        d["pathalias"] = p.pathalias
    for key, (suffix, side) in SIZES.items():
        if key in extras and side <= max(p.o_width, p.o_height):
            width, height = _size(p, side)
            tail = f"_{suffix}" if suffix else ""
            d.update({key: f"{image_base}/{p.server}/{p.id}_{p.secret}{tail}.jpg",
                      f"height_{key[4:]}": _drift(p, 4, height), f"width_{key[4:]}": _drift(p, 4, width)})
    if "url_o" in extras and p.originalsecret:
        d.update(url_o=f"{image_base}/{p.server}/{p.id}_{p.originalsecret}_o.jpg",
                 height_o=_drift(p, 4, p.o_height), width_o=_drift(p, 4, p.o_width))
    return d


# ---------------------------------------------------------------- protocol


class FlickrFail(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class Fault:
    """An injected failure: ``stat`` (code), ``http`` (status), ``slow`` (delay_s, then a normal answer),
    ``garbage`` (a non-JSON body), ``empty`` (a normal answer with no photos, as after deletions)."""

    kind: str
    code: int = 105
    status: int = 503
    delay_s: float = 0.0
    message: str = ""


@dataclass
class Call:
    method: str
    params: dict
    key: str
    outcome: str  # ok | fail:<code> | http:<status> | slow | garbage
    time: float = field(default_factory=time.monotonic)


def _percent(text: str) -> str:
    return quote(text, safe="~")


def oauth_params(header: str) -> dict[str, str]:
    """``OAuth k="v", ...`` -> {k: v} (values percent-decoded)."""
    if not header.startswith("OAuth "):
        return {}
    return {k: unquote(v) for k, v in re.findall(r'(\w+)="([^"]*)"', header[6:])}


def oauth_signature(http_method: str, url: str, params: list[tuple[str, str]], secret: str) -> str:
    """RFC 5849 HMAC-SHA1 signature over the method, base URI and every parameter but the signature."""
    pairs = sorted((_percent(k), _percent(v)) for k, v in params if k not in ("oauth_signature", "realm"))
    normal = "&".join(f"{k}={v}" for k, v in pairs)
    base = "&".join(_percent(x) for x in (http_method.upper(), url, normal))
    digest = hmac.new(f"{_percent(secret)}&".encode(), base.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _date(value: str) -> int:
    value = value.strip()
    if re.fullmatch(r"-?\d+", value):
        return int(value)
    fmt = "%Y-%m-%d %H:%M:%S" if " " in value else "%Y-%m-%d"
    return int(datetime.strptime(value, fmt).replace(tzinfo=UTC).timestamp())


class FlickrState:
    """The server's data, faults and call log (shared by handler threads)."""

    def __init__(self, photos: list[Photo], keys: dict[str, str], image_base: str, seed: int) -> None:
        self.photos = photos
        self.keys = keys
        self.image_base = image_base
        self.lock = threading.Lock()
        self.calls: list[Call] = []
        self.received = 0  # calls numbered on arrival (a slow call is logged only when it answers)
        self.schedule: dict[int, Fault] = {}
        self.always: Fault | None = None
        self.delay_s = 0.0
        self.rate_limit_per_s: float | None = None
        self.now = time.time
        self.check_signature = True
        self._recent: deque[float] = deque()
        self._rng = random.Random(seed)
        self._index()

    def _index(self) -> None:
        ps = self.photos
        self.a_lon = np.array([p.lon if p.lon is not None else np.nan for p in ps])
        self.a_lat = np.array([p.lat if p.lat is not None else np.nan for p in ps])
        self.a_up = np.array([p.dateupload for p in ps], dtype=np.int64)
        self.a_lic = np.array([p.license for p in ps])
        self.a_acc = np.array([p.accuracy for p in ps])
        self.a_pub = np.array([p.ispublic for p in ps]) == 1
        self.a_video = np.array([p.media == "video" for p in ps])
        self.a_ctype = np.array([p.content_type for p in ps])
        self.a_id = np.array([p.id for p in ps], dtype=np.int64)

    # -- dispatch

    def next_fault(self) -> Fault | None:
        with self.lock:
            self.received += 1
            number = self.received
            now = time.monotonic()
            if self.rate_limit_per_s is not None:
                while self._recent and now - self._recent[0] > 1.0:
                    self._recent.popleft()
                self._recent.append(now)
                if len(self._recent) > self.rate_limit_per_s:
                    return Fault("http", status=429)
            return self.schedule.pop(number, None) or self.always

    def log(self, call: Call) -> None:
        with self.lock:
            self.calls.append(call)

    def authenticate(self, params: dict, header: dict, http_method: str, url: str, pairs) -> str:
        key = params.get("api_key") or header.get("oauth_consumer_key", "")
        if key not in self.keys:
            fmt = "Key not found" if re.fullmatch(r"[0-9a-f]{32}", key) else "Key has invalid format"
            raise FlickrFail(100, f"Invalid API Key ({fmt})")
        if header and self.check_signature:
            given = header.get("oauth_signature", "")
            want = oauth_signature(http_method, url, list(header.items()) + list(pairs), self.keys[key])
            if not hmac.compare_digest(given, want):
                raise FlickrFail(96, "Invalid signature")
        return key

    def dispatch(self, params: dict) -> dict:
        method = params.get("method", "")
        if method == "flickr.photos.search":
            return {"photos": self.search(params), "stat": "ok"}
        if method == "flickr.photos.licenses.getInfo":
            return {"licenses": {"license": [{"id": str(i), "name": n, "url": u} for i, n, u in LICENCES]}, "stat": "ok"}
        if method == "flickr.test.echo":
            return {**{k: {"_content": v} for k, v in params.items()}, "stat": "ok"}
        raise FlickrFail(112, f'Method "{method}" not found')

    # -- flickr.photos.search

    def _mask(self, params: dict) -> np.ndarray:
        mask = self.a_pub.copy()  # unauthenticated callers see public photos only
        if params.get("bbox"):
            try:
                w, s, e, n = (float(v) for v in params["bbox"].split(","))
            except ValueError:
                raise FlickrFail(18, "Illogical arguments") from None
            if not (-180 <= w < e <= 180 and -90 <= s < n <= 90):
                raise FlickrFail(18, "Illogical arguments")
            with np.errstate(invalid="ignore"):
                mask &= (self.a_lon >= w) & (self.a_lon <= e) & (self.a_lat >= s) & (self.a_lat <= n)
            if not any(params.get(k) for k in LIMITING):
                mask &= self.a_up >= self.now() - 12 * 3600
        if params.get("has_geo", "0") != "0":
            mask &= ~np.isnan(self.a_lat)
        if params.get("license"):
            mask &= np.isin(self.a_lic, [int(v) for v in params["license"].split(",") if v.strip()])
        if params.get("min_upload_date"):
            mask &= self.a_up >= _date(params["min_upload_date"])
        if params.get("max_upload_date"):
            mask &= self.a_up <= _date(params["max_upload_date"])
        if params.get("accuracy"):
            mask &= self.a_acc >= int(params["accuracy"])
        if params.get("media") == "photos":
            mask &= ~self.a_video
        elif params.get("media") == "videos":
            mask &= self.a_video
        ctype = int(params.get("content_type") or 7)
        mask &= np.isin(self.a_ctype, {1: [1], 2: [2], 3: [3], 4: [1, 2], 5: [2, 3], 6: [1, 3]}.get(ctype, [1, 2, 3]))
        return mask

    def search(self, params: dict) -> dict:
        if not any(params.get(k) for k in CRITERIA):
            raise FlickrFail(3, "Parameterless searches have been disabled. Please use flickr.photos.getRecent instead.")
        try:
            per_page = int(params.get("per_page") or 100)
            page = max(1, int(params.get("page") or 1))
            idx = np.flatnonzero(self._mask(params))
        except ValueError:
            raise FlickrFail(18, "Illogical arguments") from None
        per_page = min(per_page if per_page > 0 else 100, 250 if params.get("bbox") else 500)
        order = np.lexsort((self.a_id[idx], self.a_up[idx]))
        if params.get("sort", "date-posted-desc") != "date-posted-asc":
            order = order[::-1]
        ranked = idx[order][:SEARCH_CAP]
        total = int(idx.size)
        pages = math.ceil(total / per_page)
        last_reachable = max(1, math.ceil(ranked.size / per_page))
        if page > pages:
            chosen = ranked[:0]
        else:
            shown = min(page, last_reachable)
            chosen = ranked[(shown - 1) * per_page: shown * per_page]
        extras = {x.strip() for x in params.get("extras", "").split(",") if x.strip()}
        with self.lock:
            as_text = self._rng.random() < 0.5
        return {"page": page, "pages": str(pages) if as_text else pages, "perpage": per_page,
                "total": str(total) if as_text else total,
                "photo": [render(self.photos[i], extras, self.image_base) for i in chosen]}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format, *args) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _reply(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            if status == 429:
                self.send_header("Retry-After", "1")
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout)

    def _handle(self) -> None:
        st = self.server.state
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        pairs = parse_qsl(url.query, keep_blank_values=True) + parse_qsl(body, keep_blank_values=True)
        params = dict(pairs)
        fault = st.next_fault()
        method = params.get("method", "")
        header = oauth_params(self.headers.get("Authorization", ""))
        key = params.get("api_key") or header.get("oauth_consumer_key", "")
        if fault and fault.kind == "slow" or st.delay_s:
            time.sleep(max(st.delay_s, fault.delay_s if fault and fault.kind == "slow" else 0.0))
        if fault and fault.kind == "http":
            st.log(Call(method, params, key, f"http:{fault.status}"))
            return self._reply(fault.status, b"<html><body><h1>Error</h1></body></html>", "text/html")
        if fault and fault.kind == "garbage":
            st.log(Call(method, params, key, "garbage"))
            return self._reply(200, b"<html>Bad Gateway</html>", "text/html")
        try:
            if fault and fault.kind == "stat":
                raise FlickrFail(fault.code, fault.message or "Sorry, the Flickr API service is not currently available.")
            host = self.headers.get("Host", "")
            st.authenticate(params, header, self.command, f"http://{host}{url.path}", pairs)
            if params.get("format") != "json":
                raise FlickrFail(111, f'Format "{params.get("format", "rest")}" not found')
            result, outcome = st.dispatch(params), fault.kind if fault else "ok"
            if fault and fault.kind == "empty" and "photos" in result:
                result["photos"]["photo"] = []
        except FlickrFail as fail:
            result, outcome = {"stat": "fail", "code": fail.code, "message": fail.message}, f"fail:{fail.code}"
        st.log(Call(method, params, key, outcome))
        text = json.dumps(result)
        if params.get("nojsoncallback") != "1":
            text = f"{params.get('jsoncallback') or 'jsonFlickrApi'}({text})"
        self._reply(200, text.encode())


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: FlickrState


@dataclass
class FlickrServer:
    """A running server: ``rest_url`` for ``flickr.rest_url``, ``state`` for faults and the call log."""

    rest_url: str
    state: FlickrState

    @property
    def calls(self) -> list[Call]:
        return self.state.calls

    def search_calls(self) -> list[Call]:
        return [c for c in self.state.calls if c.method == "flickr.photos.search"]


@contextlib.contextmanager
def flickr_server(
    photos: list[Photo],
    keys: dict[str, str],
    *,
    image_base: str = "https://live.staticflickr.com",
    seed: int = 0,
) -> Iterator[FlickrServer]:
    """Serve ``photos`` on a free loopback port to callers holding one of ``keys`` (key -> secret)."""
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.state = FlickrState(photos, keys, image_base, seed)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield FlickrServer(f"http://127.0.0.1:{httpd.server_address[1]}/services/rest/", httpd.state)
    finally:
        httpd.shutdown()
        httpd.server_close()
