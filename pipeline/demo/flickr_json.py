"""Flickr-shaped metadata for the demo photos, as ``flickr.photos.search`` with extras returns it.

Records carry the API's real type drift (FACTS §2): in one capture latitude, longitude,
accuracy and sizes are strings, in another numbers. Ids grow with the upload date, owners post
several photos each, licences follow the CC mix of geotagged Flickr photos (the CC 4.0 ids 11-16
only after their launch on 2025-06-18). Image URLs are paths relative to the demo folder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from pipeline.demo.noise import hash32

DENIED_OWNER = ("99999999@N00", "geo_stock_uploads")  # the owner catalogs/deny_list.yaml lists
CC4_LAUNCH = int(datetime(2025, 6, 18, tzinfo=UTC).timestamp())
UPLOAD_RANGE = (int(datetime(2008, 1, 1, tzinfo=UTC).timestamp()),
                int(datetime(2025, 10, 31, tzinfo=UTC).timestamp()))
# (upload date, typical photo id) anchors: Flickr ids grow with time, 10 digits in 2008, 11 today
ID_ANCHORS = ((2008, 2.15e9), (2012, 6.6e9), (2016, 2.4e10), (2020, 4.98e10), (2026, 5.5e10))
LICENCES = (np.arange(1, 11), np.array([0.26, 0.14, 0.18, 0.14, 0.10, 0.05, 0.02, 0.01, 0.05, 0.05]))
LICENCES_CC4 = (np.arange(11, 17), np.array([0.30, 0.15, 0.05, 0.20, 0.20, 0.10]))
THINGS = ("street corner", "old town", "riverside walk", "morning light", "city hall", "the long avenue",
          "corner shop", "walking tour", "down the street", "park bench", "rooftops", "after the rain",
          "tram stop", "market square", "bridge", "lakeside", "quiet street", "facades")
TAGS = ("street", "city", "architecture", "urban", "building", "travel", "europe", "walk", "streetphotography",
        "facade", "window", "tree", "park", "summer", "winter", "spring", "autumn", "iphone", "canon", "fujifilm")
GIVEN = ("Anna", "Marek", "Lucia", "Tom", "Ines", "Pavel", "Sofie", "Jonas", "Elena", "Rui", "Mia", "Karl",
         "Nadia", "Oskar", "Greta", "Luca", "Hana", "Yusuf", "Clara", "Ivo")
FAMILY = ("Berg", "Novak", "Ferreira", "Lindqvist", "Moreau", "Kowalski", "Rossi", "Varga", "Jensen",
          "Weber", "Horvat", "Silva", "Dumont", "Keller", "Marin")
HANDLES = ("wanderlens", "streetframes", "urbanwalker", "fotoflaneur", "the_grey_city", "pixelroamer",
           "slowshutter", "citynotes", "lightandstone", "kerbside")


@dataclass(frozen=True)
class Owner:
    nsid: str
    name: str


def owners(rng: np.random.Generator, n: int = 90) -> list[Owner]:
    """A pool of Flickr accounts: NSIDs like 52755911@N03, real-name or handle display names."""
    out, seen = [], set()
    while len(out) < n:
        nsid = f"{rng.integers(10_000_000, 200_000_000)}@N{rng.integers(0, 9):02d}"
        if nsid in seen or nsid == DENIED_OWNER[0]:
            continue
        seen.add(nsid)
        if rng.random() < 0.6:
            name = f"{rng.choice(GIVEN)} {rng.choice(FAMILY)}"
        else:
            name = f"{rng.choice(HANDLES)}{rng.integers(1, 99) if rng.random() < 0.5 else ''}"
        out.append(Owner(nsid, name))
    return out


def pick_owners(rng: np.random.Generator, pool: list[Owner], n: int) -> list[Owner]:
    """Owners for n photos: a few prolific accounts and a long tail (Zipf-like weights)."""
    weights = 1.0 / np.arange(1, len(pool) + 1) ** 1.1
    return [pool[i] for i in rng.choice(len(pool), size=n, p=weights / weights.sum())]


def upload_times_and_ids(rng: np.random.Generator, n: int) -> tuple[np.ndarray, list[str]]:
    """Upload times (unix s) and unique photo ids that grow with them, both in random photo order."""
    times = np.sort(rng.integers(*UPLOAD_RANGE, size=n))
    years = 1970 + times / (365.2425 * 86400)
    base = np.interp(years, [a for a, _ in ID_ANCHORS], [b for _, b in ID_ANCHORS])
    ids = (base + rng.integers(0, 400_000, size=n)).astype(np.int64)
    for k in range(1, n):  # strictly increasing, hence unique
        ids[k] = max(ids[k], ids[k - 1] + 1)
    order = rng.permutation(n)
    return times[order], [str(i) for i in ids[order]]


def _licence(rng: np.random.Generator, upload: int) -> str:
    ids, p = LICENCES_CC4 if upload >= CC4_LAUNCH and rng.random() < 0.4 else LICENCES
    return str(int(rng.choice(ids, p=p)))


def _title(rng: np.random.Generator, city: str) -> str:
    kind = rng.random()
    if kind < 0.35:
        pattern, digits = [("IMG_", 4), ("DSC_", 4), ("DSCF", 4), ("P", 7)][int(rng.integers(0, 4))]
        return f"{pattern}{int(rng.integers(1, 10**digits)):0{digits}d}"
    if kind < 0.8:
        thing = str(rng.choice(THINGS))
        return f"{city} - {thing}" if rng.random() < 0.5 else thing.capitalize()
    return ""


def place(seed: int, city_index: int, x: float, y: float) -> tuple[str, str]:
    """A neighbourhood's Flickr place_id and WOE id, from its 400 m cell."""
    h = int(hash32(seed, city_index, math.floor(x / 400), math.floor(y / 400))[0])
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    place, v = "", h * 2654435761
    for _ in range(12):
        place, v = place + alphabet[v % 62], v // 62
    return place, str(600_000 + h % 40_000_000)


def _stamp(unix: int) -> str:
    return datetime.fromtimestamp(int(unix), tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def record(rng: np.random.Generator, photo_id: str, owner: Owner, upload: int, city: str,
           place: tuple[str, str], size: tuple[int, int], geo: tuple) -> dict:
    """One photo as the search API returns it; ``geo`` is (latitude, longitude, accuracy) as recorded."""
    modern = upload >= 1_500_000_000
    taken = upload - int(rng.exponential(20 * 86400)) - int(rng.integers(0, 6 * 3600))
    old_style = rng.random() < 0.5  # the capture's type drift: strings (older) or numbers (newer)
    width, height = size
    rec = {
        "id": photo_id, "owner": owner.nsid, "ownername": owner.name,
        "secret": f"{int(rng.integers(0, 16**10)):010x}",
        "server": "65535" if modern else str(int(rng.integers(1000, 8000))),
        "farm": 66 if modern else int(rng.integers(1, 10)),
        "title": _title(rng, city), "ispublic": 1, "isfriend": 0, "isfamily": 0,
        "license": _licence(rng, upload),
        "description": {"_content": "" if rng.random() < 0.7 else f"Walking around {city}."},
        "dateupload": str(upload), "lastupdate": str(upload + int(rng.integers(0, 400 * 86400))),
        "datetaken": _stamp(taken), "datetakengranularity": "0" if old_style else 0, "datetakenunknown": "0",
        "context": 2 if rng.random() < 0.2 else 0, "place_id": place[0], "woeid": place[1],
        "geo_is_public": 1, "geo_is_contact": 0, "geo_is_friend": 0, "geo_is_family": 0,
        "tags": " ".join([city.lower(), *rng.choice(TAGS, size=int(rng.integers(1, 6)), replace=False)]),
        "machine_tags": "", "media": "photo", "media_status": "ready",
        "url_m": f"photos/{photo_id}.jpg",
        "width_m": str(width) if old_style else width, "height_m": str(height) if old_style else height,
    }
    if rng.random() < 0.6:  # the owner lets others see the original
        scale = int(rng.choice([8, 10, 12]))
        rec.update(originalsecret=f"{int(rng.integers(0, 16**10)):010x}", originalformat="jpg",
                   o_width=str(width * scale), o_height=str(height * scale))
    return _set_geo(rec, *geo, old_style)


def _set_geo(rec: dict, lat, lon, accuracy: int, old_style: bool) -> dict:
    """Add latitude, longitude and accuracy with the record's type drift; None leaves a key out."""
    for key, value in (("latitude", lat), ("longitude", lon)):
        if value is None:
            continue
        if isinstance(value, str):
            rec[key] = value
        else:
            rec[key] = f"{value:.6f}" if old_style else round(float(value), 6)
    rec["accuracy"] = str(accuracy) if old_style else accuracy
    return rec
