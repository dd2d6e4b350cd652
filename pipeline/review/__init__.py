"""Review pairs in the browser and record curator verdicts that the next `dvc repro` applies.

Serves a local page over the latest tables (photos, downloads, pairs, chips, decisions): queues
of pairs to check (dropped by a model, kept with low confidence, a random sample of kept, by
reason, city or split), the photo beside its overhead chip, and keyboard verdicts saved at once
to the verdicts table (params: filter.verdicts) that the filter stage depends on.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
from pathlib import Path

from pipeline.config import Params
from pipeline.errors import StageInputError

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8765, help="port (default: 8765)")
    parser.add_argument("--curator", default=None, help="name recorded with each verdict (default: $USER)")
    parser.add_argument("--tables", default="tables", help="folder of the pipeline tables (default: tables)")
    parser.add_argument("--verdicts", default=None, help="verdicts CSV (default: params filter.verdicts)")


def curator_name(flag: str | None) -> str:
    """The curator's name: the flag, else ``$USER``, else the login name."""
    if flag and flag.strip():
        return flag.strip()
    try:
        return os.environ.get("USER") or getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in some containers
        return "unknown"


def make_app(
    params: Params,
    tables: str | Path = "tables",
    verdicts: str | Path | None = None,
    curator: str | None = None,
    root: str | Path = ".",
    allowed_hosts: list[str] | None = None,
):
    """The review ASGI app over the tables under ``tables`` (paths relative to ``root``)."""
    from pipeline.review.app import build_app
    from pipeline.review.dataset import Dataset, Settings, TablePaths, filter_kinds
    from pipeline.review.verdict_table import VerdictTable

    root = Path(root).resolve()
    paths = TablePaths.under(root / tables)
    if not paths.photos.exists():
        raise StageInputError(f"{paths.photos} does not exist: run `dvc repro` first (or pass --tables)")
    settings = Settings(
        root=root,
        edge_m=params.chip.edge_m,
        thresholds={"indoor": params.classify.indoor_threshold, "relevance": params.relevance.threshold},
        kinds=filter_kinds(),
        s3=params.s3,
    )
    table = VerdictTable(root / (verdicts or params.filter.verdicts))
    return build_app(Dataset(paths, settings), table, curator_name(curator), allowed_hosts)


def main(params: Params, args: argparse.Namespace) -> int:
    import uvicorn

    hosts = ["127.0.0.1", "localhost", "[::1]"]
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("binding %s: anyone who can reach this address can read the dataset and save verdicts", args.host)
        hosts = ["*"]
    app = make_app(params, args.tables, args.verdicts, args.curator, allowed_hosts=hosts)
    app.state.review.dataset.index()  # build the index before the first request
    log.info("review page: http://%s:%d/  (apply verdicts with `dvc repro`; Ctrl-C to stop)", args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
