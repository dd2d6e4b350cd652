"""Small geodetic helpers shared by stages: UTM zones and cached transformers."""

from __future__ import annotations

import math
from functools import lru_cache

from pyproj import Transformer


def utm_epsg(lon: float, lat: float) -> int:
    """The WGS 84 / UTM zone EPSG code for a point (326zz north, 327zz south); no Norway/Svalbard exceptions."""
    if not (math.isfinite(lon) and math.isfinite(lat)) or not (-180 <= lon <= 180 and -90 <= lat <= 90):
        raise ValueError(f"not a lon/lat position: ({lon}, {lat})")
    zone = min(int((lon + 180) // 6) + 1, 60)
    return (32600 if lat >= 0 else 32700) + zone


@lru_cache(maxsize=64)
def transformer(src_epsg: int | str, dst_epsg: int | str) -> Transformer:
    """A cached always_xy transformer (create once, reuse: building one costs milliseconds)."""
    return Transformer.from_crs(src_epsg, dst_epsg, always_xy=True)
