"""Shared pytest fixtures: paths to the read-only real data and a loopback moto S3 server."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.s3server import moto_s3

REPO = Path(__file__).resolve().parent.parent
REALDATA = REPO.parent / "shared" / "realdata"


@pytest.fixture(scope="session")
def realdata() -> Path:
    """``../shared/realdata`` (read-only real photos and rasters); skip when this checkout lacks it."""
    if not REALDATA.is_dir():
        pytest.skip("../shared/realdata is not present beside this checkout")
    return REALDATA


@pytest.fixture()
def s3():
    """S3Params for a fresh moto S3 server on loopback (boto3 and GDAL /vsis3/ both reach it)."""
    with moto_s3() as params:
        yield params
