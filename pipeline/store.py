"""The image and tile store: a local folder or ``s3://bucket/prefix``, with atomic writes.

Tables hold the URIs this module returns: a path relative to the working directory for a
relative local store (never an absolute path unless the user configured one), or ``s3://``.
Any URI (store, ``s3://``, ``http(s)://`` or local path) can be read back with
:func:`read_bytes`, and rasters are opened through :func:`gdal_path` + :func:`rasterio_env`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from pipeline.config import S3Params
from pipeline.errors import SECRET_ENV, StoreError

_TMP_PREFIX = ".crossview-tmp-"


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")


@functools.lru_cache(maxsize=8)
def s3_client(endpoint_url: str | None, region: str, anonymous: bool):
    """A boto3 S3 client; anonymous (UNSIGNED) for public buckets such as SpaceNet's."""
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    config = Config(signature_version=UNSIGNED) if anonymous else Config()
    config = config.merge(Config(retries={"max_attempts": 5, "mode": "standard"}))
    return boto3.client("s3", endpoint_url=endpoint_url or None, region_name=region, config=config)


S3_NO_KEY = frozenset({"404", "NoSuchKey", "NotFound"})  # S3 error codes of an object that does not exist


def s3_error_code(err: Exception) -> str:
    """The S3 error code of a botocore ``ClientError`` (``"NoSuchKey"``, ``"403"`` ...); empty for other errors."""
    return str(((getattr(err, "response", None) or {}).get("Error") or {}).get("Code", ""))


def client_for(s3: S3Params, anonymous: bool | None = None):
    return s3_client(s3.endpoint_url, s3.region, s3.anonymous if anonymous is None else anonymous)


def gdal_path(uri: str) -> str:
    """The path GDAL/rasterio opens for a URI: ``/vsis3/`` for S3, ``/vsicurl/`` for HTTP."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        return f"/vsis3/{bucket}/{key}"
    if is_http(uri):
        return f"/vsicurl/{uri}"
    return uri


def gdal_options(s3: S3Params, anonymous: bool | None = None) -> dict[str, str]:
    """GDAL config options for ``/vsis3/`` reads that match the boto3 client's settings."""
    opts = {
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.TIF,.tiff,.TIFF,.vrt,.ovr",
        "AWS_REGION": s3.region,
        # GDAL retries a failed HTTP request (these codes, and curl errors such as a reset connection)
        # with a delay that doubles; 403/404 are not retried: the tile gets an error row instead.
        "GDAL_HTTP_MAX_RETRY": "4",
        "GDAL_HTTP_RETRY_DELAY": "1",
        "GDAL_HTTP_RETRY_CODES": "429,500,502,503,504",
    }
    if s3.anonymous if anonymous is None else anonymous:
        opts["AWS_NO_SIGN_REQUEST"] = "YES"
    if s3.endpoint_url:
        parsed = urlparse(s3.endpoint_url)
        opts["AWS_S3_ENDPOINT"] = parsed.netloc
        opts["AWS_HTTPS"] = "YES" if parsed.scheme == "https" else "NO"
        opts["AWS_VIRTUAL_HOSTING"] = "FALSE"
    return opts


def rasterio_env(s3: S3Params, anonymous: bool | None = None):
    """A ``rasterio.Env`` configured for local, HTTP and S3 (``/vsis3/``) reads."""
    import rasterio

    return rasterio.Env(**gdal_options(s3, anonymous))


def read_bytes(uri: str, s3: S3Params, timeout_s: float = 60.0) -> bytes:
    """Read a whole object from a local path, ``s3://`` or ``http(s)://`` URI."""
    try:
        if is_s3(uri):
            bucket, key = split_s3(uri)
            return client_for(s3).get_object(Bucket=bucket, Key=key)["Body"].read()
        if is_http(uri):
            import requests

            resp = requests.get(uri, timeout=timeout_s)
            resp.raise_for_status()
            return resp.content
        return Path(uri).read_bytes()
    except FileNotFoundError:
        raise StoreError(f"{uri}: no such file") from None
    except Exception as err:
        if isinstance(err, StoreError):
            raise
        raise StoreError(f"{uri}: read failed: {type(err).__name__}: {redact(str(err))}") from None




def redact(text: str) -> str:
    """Text without credentials: URL ``user:password@``, query strings (presigned URLs), secret env values."""
    text = re.sub(r"(https?://)[^/\s@]+@", r"\1***@", text)
    text = re.sub(r"\?[^\s'\"<>)]*=[^\s'\"<>)]*", "?***", text)
    for var in SECRET_ENV:
        value = os.environ.get(var)
        if value:
            text = text.replace(value, "***")
    return text


_tmp_names = itertools.count()
_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def _open_beside(path: Path) -> tuple[int, Path]:
    """Create an empty temp file beside ``path``; return its descriptor and path.

    Mode 0666 with the umask applied (ordinary files, no chmod), under a ``.crossview-tmp-`` name no
    other thread or process can choose (so no retry loop), keeping ``path``'s suffix for writers that
    pick a format by it. A crash leaves at most such a file; :meth:`Store.clean_partial` removes them.
    Two system calls fewer per file than ``tempfile.mkstemp`` + chmod: the download stage writes two
    files per photo.
    """
    tmp = path.with_name(
        f"{_TMP_PREFIX}{path.stem}.{os.getpid()}-{threading.get_ident()}-{next(_tmp_names)}{path.suffix}"
    )
    try:
        return os.open(tmp, _TMP_FLAGS, 0o666), tmp
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(tmp, _TMP_FLAGS, 0o666), tmp


@contextlib.contextmanager
def atomic_file(path: str | Path, fsync: bool = False) -> Iterator[str]:
    """Yield a temp path beside local ``path``; on success it becomes ``path`` (mode 0666 less the umask) at once.

    With ``fsync`` the file and its folder are flushed to disk too, so the new content survives a
    power cut (for files people write by hand-like actions, such as curator verdicts).
    """
    path = Path(path)
    fd, tmp = _open_beside(path)
    os.close(fd)
    try:
        yield str(tmp)
        if fsync:
            _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(path.parent)


def _fsync_path(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (a new or renamed file in it) to disk."""
    _fsync_path(path)


def put_local_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to local ``path`` atomically in four system calls (create, write, close, rename)."""
    path = Path(path)
    fd, tmp = _open_beside(path)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(text: str, path: str | Path, fsync: bool = False) -> None:
    """Write a local UTF-8 text file atomically (never visible half-written); ``fsync``: see :func:`atomic_file`."""
    if not fsync:
        put_local_atomic(path, text.encode("utf-8"))
        return
    with atomic_file(path, fsync=True) as tmp:
        Path(tmp).write_text(text, encoding="utf-8", newline="")


def json_text(data: object, indent: int | None = 2, sort_keys: bool = False) -> str:
    """The project's JSON layout: UTF-8 text, ``indent`` spaces (None: compact), a final newline."""
    if indent is None:
        return json.dumps(data, separators=(",", ":"), sort_keys=sort_keys, ensure_ascii=False) + "\n"
    return json.dumps(data, indent=indent, sort_keys=sort_keys, ensure_ascii=False) + "\n"


def write_json(data: object, path: str | Path, indent: int | None = 2, sort_keys: bool = False) -> None:
    """Write a local JSON file atomically (reports, metrics, model files, state) in :func:`json_text`'s layout."""
    write_text_atomic(json_text(data, indent, sort_keys), path)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a local file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class Store:
    """A place to put images and tiles: a local folder or an S3 prefix."""

    def __init__(self, root: str, s3: S3Params | None = None) -> None:
        self.root = root.rstrip("/")
        self.s3 = s3 or S3Params()
        self.remote = is_s3(self.root)

    def __repr__(self) -> str:
        return f"Store({self.root!r})"

    def uri(self, key: str) -> str:
        """The URI recorded in tables for ``key`` (e.g. ``photos/123.jpg``)."""
        return f"{self.root}/{key.lstrip('/')}"

    def _s3(self):
        # Writing to a store needs credentials even when source imagery is read anonymously.
        return client_for(self.s3, anonymous=False)

    def exists(self, key: str) -> bool:
        uri = self.uri(key)
        if not self.remote:
            return Path(uri).is_file()
        bucket, k = split_s3(uri)
        try:
            self._s3().head_object(Bucket=bucket, Key=k)
            return True
        except Exception as err:  # noqa: BLE001
            if s3_error_code(err) in S3_NO_KEY:
                return False
            raise StoreError(f"{uri}: cannot check existence: {redact(str(err))}") from None

    def put_json(self, key: str, data: dict) -> str:
        """Write a small JSON object (a sidecar marking finished work) at ``key``, keys sorted; return its URI."""
        return self.put_bytes(key, json.dumps(data, sort_keys=True).encode())

    def put_bytes(self, key: str, data: bytes) -> str:
        """Write ``data`` at ``key`` atomically; return its URI."""
        if not self.remote:
            put_local_atomic(self.uri(key), data)
            return self.uri(key)
        with self.writer(key) as tmp:
            Path(tmp).write_bytes(data)
        return self.uri(key)

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[str]:
        """Yield a local temp path to write; on success it becomes ``key`` atomically."""
        uri = self.uri(key)
        if not self.remote:
            with atomic_file(uri) as tmp:
                yield tmp
            return
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=Path(key).suffix)
        os.close(fd)
        try:
            yield tmp  # what the caller's block raises (a failed source read) is its own error, not the store's
            bucket, k = split_s3(uri)
            try:  # botocore retries 5xx, throttling and dropped connections (s3_client's retry config)
                self._s3().upload_file(tmp, bucket, k)  # one PUT or a multipart upload: all or nothing
            except Exception as err:  # noqa: BLE001 - boto3 and s3transfer raise many kinds; all are the store's
                raise StoreError(f"{uri}: write failed: {redact(str(err))}") from None
        finally:
            Path(tmp).unlink(missing_ok=True)

    def local_copy(self, key: str) -> str:
        """The local path of ``key`` (downloaded to a temp file for S3 stores)."""
        uri = self.uri(key)
        if not self.remote:
            return uri
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=Path(key).suffix)
        os.close(fd)
        bucket, k = split_s3(uri)
        self._s3().download_file(bucket, k, tmp)
        return tmp

    def clean_partial(self, prefix: str) -> int:
        """Remove temp files an interrupted run left under ``prefix`` (local stores); return the count."""
        if self.remote:
            return 0  # S3 uploads are atomic: an interrupted PUT leaves nothing behind
        base = Path(self.uri(prefix))
        if not base.exists():
            return 0
        stale = list(base.rglob(f"{_TMP_PREFIX}*"))
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)

    def remove_tree(self, prefix: str) -> None:
        """Delete everything under ``prefix`` (local stores only; used by tests and `--force`)."""
        if not self.remote:
            shutil.rmtree(self.uri(prefix), ignore_errors=True)


STORE_OUT_HELP = (
    "local folder that dvc.yaml tracks as this stage's store output (e.g. data/store/photos); created even "
    "when the store is elsewhere (s3://, another folder), where it stays empty"
)


def add_store_out(parser) -> None:
    """The ``--store-out`` argument of a stage that writes into the store."""
    parser.add_argument("--store-out", default=None, help=STORE_OUT_HELP)


def make_store_out(path: str | None) -> None:
    """Create the stage's DVC-tracked store folder (see :data:`STORE_OUT_HELP`)."""
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
