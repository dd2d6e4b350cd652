"""``crossview STAGE``: one command per pipeline stage (what dvc.yaml calls) plus tools."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback

from pipeline.config import load_params
from pipeline.errors import CrossviewError, mask_secrets

# name -> (module, one-line help). Each module defines configure(parser) and main(params, args).
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("pipeline.demo", "generate the embedded demo AOI (rasters, photos, metadata)"),
    "search": ("pipeline.search", "find photos (demo catalog, Flickr, or a custom table/folder) -> photos"),
    "download": ("pipeline.download", "fetch and validate photo files into the store -> downloads"),
    "tiles": ("pipeline.tiles", "convert source rasters to 8-bit RGB UTM COGs in the store -> tiles"),
    "pair": ("pipeline.pair", "pair photos with tiles, assign splits -> pairs"),
    "chip": ("pipeline.chip", "cut an overhead chip around each pair -> chips"),
    "classify": ("pipeline.classify", "scene scores (indoor vote) + embeddings for downloaded photos -> scores"),
    "relevance": ("pipeline.relevance", "train the relevance head from curator verdicts -> model + relevance scores"),
    "filter": ("pipeline.filter", "run every rule in filters/ -> decisions + funnel report"),
    "manifest": ("pipeline.manifest", "write train/val/test manifests, the dataset card and counts"),
    "train": ("pipeline.train.stage", "train a cross-view model on the manifests -> models/, metrics, loss curves"),
    "evaluate": ("pipeline.train.stage", "rank every chip for its photo on a split -> recall@k, ranks, orientations"),
    "audit": ("pipeline.audit", "score each pair's photo on a small grid around its geotag -> geotag_audit, suspects"),
    "heatmap": ("pipeline.heatmap", "score a photo over a search area -> PNG, GeoTIFF and GeoJSON of scores and bearings"),
    "inspect": ("pipeline.inspect_photos", "run every photo-level rule over image files or folders"),
    "review": ("pipeline.review", "serve the curator review page on 127.0.0.1; verdicts feed the next dvc repro"),
    "catalog": ("pipeline.catalog_check", "check that the SpaceNet catalog's S3 keys exist"),
    "picture": ("pipeline.picture", "draw a PNG of a few pairs (photo beside chip) from a manifest"),
    "study-size": ("studies.size_study", "training-set size study: train on nested subsets, fit y = a - b / x^c"),
    "study-filters": ("studies.filter_study", "what each filter is worth: train with it off, against a size-matched set"),
    "panoramas": ("pipeline.panoramas", "a CVUSA-format folder (or the demo's rendered panoramas) -> panorama manifests"),
    "simulation": ("studies.simulation", "train and evaluate one panorama-to-photo step (the seed's Figure 4)"),
    "simulation-report": ("studies.simulation", "the simulation study's results.json and plot, over its steps"),
}


def _command_in(argv: list[str]) -> str | None:
    """The subcommand named in argv (the first word that is one), if any."""
    return next((a for a in argv if a in COMMANDS), None)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The CLI; only the invoked command's module is imported (one broken or slow stage never blocks another)."""
    chosen = _command_in(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="crossview", description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        if name != chosen:
            sub.add_parser(name, help=help_text)
            continue
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip())
        p.add_argument("--params", default=argparse.SUPPRESS, help="params file (default: params.yaml)")
        module.configure(p)
        p.set_defaults(_module=module)
    return parser


class MaskingFormatter(logging.Formatter):
    """Wraps a handler's formatter: log lines (and logged tracebacks) with credential values masked."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        return mask_secrets(self.inner.format(record))


def main(argv: list[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for handler in logging.getLogger().handlers:
        if not isinstance(handler.formatter, MaskingFormatter):
            handler.setFormatter(MaskingFormatter(handler.formatter))
    logging.getLogger("botocore").setLevel(logging.WARNING)
    logging.getLogger("rasterio").setLevel(logging.WARNING)
    try:
        params = load_params(args.params)
        return int(args._module.main(params, args) or 0)
    except CrossviewError as err:
        print(mask_secrets(f"crossview {args.command}: error: {err}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"crossview {args.command}: interrupted (rerun it to resume)", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - a bug: the traceback for the report, with any credential value masked
        print(mask_secrets(traceback.format_exc()), file=sys.stderr)
        print(f"crossview {args.command}: crashed (a bug: please report the traceback above)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
