"""A moto S3 server on loopback, for tests that talk to S3 through boto3 and GDAL's /vsis3/."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator

from pipeline.config import S3Params

FAKE_ENV = {
    # moto accepts any credentials; these are recognisably fake and must never be printed.
    "AWS_ACCESS_KEY_ID": "AKIAFAKEFAKEFAKE0000",
    "AWS_SECRET_ACCESS_KEY": "fake-secret-never-print-0123456789",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_s3() -> Iterator[S3Params]:
    """Start ThreadedMotoServer on a free loopback port; yield S3Params pointing at it."""
    from moto.server import ThreadedMotoServer

    old = {k: os.environ.get(k) for k in FAKE_ENV}
    os.environ.update(FAKE_ENV)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield S3Params(endpoint_url=f"http://127.0.0.1:{port}", region="us-east-1", anonymous=False)
    finally:
        server.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
