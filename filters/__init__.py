"""Every rule and model that can drop a photo, and the registry the filter stage runs.

A filter is a plain function ``(tables, params) -> decisions``: it reads the stage tables in a
:class:`filters.base.Tables` value and returns a DECISIONS table (id, filter, kept, reason, score)
with one row per photo it judges. No filter drops rows itself; the filter stage runs them all and
the manifest stage keeps a photo only when no decision drops it.

Reasons read ``"<code>"`` or ``"<code>: <detail>"``; the code (:func:`filters.base.reason_code`)
is what the funnel (:mod:`filters.funnel`) and the dataset card count. Kept rows have an empty
reason unless there is something to note (a converted single-band photo, an unknown geotag
accuracy, a curator keep).

A thinning filter (``thins=True``: the density limit) runs after all the others and the curator
override, on the photos they kept, and judges only those.

Adding a filter: write one function in a ``*_rules.py`` module here (helpers in
:mod:`filters.base`) and add one line to ``REGISTRY``.
``kind`` is ``rule`` (deterministic checks on metadata, pairs and chips) or ``model`` (classifier
scores); a curator ``keep`` verdict overrides ``model`` drops only.
"""

from __future__ import annotations

from filters import chip_rules, curator_rules, indoor_rules, location_rules, photo_rules, relevance_rules
from filters.base import Filter

# Registry order is the funnel order: a photo dropped by several filters is counted once, under
# the first. Cheap upstream facts first, then location, chips, models, the curator, and last the
# density limit, which thins out only the photos every other filter kept.
REGISTRY: list[Filter] = [
    Filter("download", photo_rules.download, "rule"),
    Filter("single_band", photo_rules.single_band, "rule"),
    Filter("colour_mode", photo_rules.colour_mode, "rule"),
    Filter("too_small", photo_rules.too_small, "rule"),
    Filter("placeholder_image", photo_rules.placeholder_image, "rule"),
    Filter("duplicate_image", photo_rules.duplicate_image, "rule"),
    Filter("licence", photo_rules.licence, "rule"),
    Filter("coordinates", location_rules.coordinates, "rule"),
    Filter("accuracy", photo_rules.accuracy, "rule"),
    Filter("date_taken", photo_rules.date_taken, "rule"),
    Filter("deny_list", location_rules.deny_list, "rule"),
    Filter("pairing", location_rules.pairing, "rule"),
    Filter("split_buffer", location_rules.split_buffer, "rule"),
    Filter("chip_error", chip_rules.chip_error, "rule"),
    Filter("chip_nodata", chip_rules.chip_nodata, "rule"),
    Filter("chip_uniform", chip_rules.chip_uniform, "rule"),
    Filter("indoor", indoor_rules.indoor, "model"),
    Filter("relevance", relevance_rules.relevance, "model"),
    Filter("curator", curator_rules.curator, "rule"),
    Filter("density", location_rules.density, "rule", thins=True),
]

__all__ = ["REGISTRY"]
