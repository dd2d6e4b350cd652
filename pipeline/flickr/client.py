"""The Flickr API client: the unmodified ``flickrapi.FlickrAPI`` plus a rate budget and retries.

flickrapi 2.4 has neither retries nor rate limiting, so this wrapper adds a token bucket at
``flickr.calls_per_hour`` and exponential backoff with jitter on HTTP 429/5xx, timeouts,
connection errors and the ``stat=fail`` codes Flickr uses for passing outages. An invalid key
or bad parameters end the run at once with a message that says what to change. The key and
secret never reach a log record, a repr or an exception message.
"""

from __future__ import annotations

import configparser
import logging
import os
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.config import FlickrParams
from pipeline.errors import ConfigError, CrossviewError

log = logging.getLogger(__name__)

# requests_oauthlib and oauthlib log the signed Authorization header (which carries the key as
# oauth_consumer_key) at DEBUG, so `-v` would print it. flickrapi logs every call at INFO and every
# HTTP error at ERROR, even those this module retries; its failures reach the user as our errors.
for _name, _level in (("requests_oauthlib", logging.INFO), ("oauthlib", logging.INFO), ("flickrapi", logging.CRITICAL)):
    if logging.getLogger(_name).level < _level:
        logging.getLogger(_name).setLevel(_level)

# stat=fail codes that mean "try again later" (105 service unavailable, 201 API unavailable,
# 0 and 10 seen as transient search outages); everything else is final.
TRANSIENT_CODES = frozenset({0, 10, 105, 201})
AUTH_CODES = frozenset({96, 97, 98, 99, 100})
MAX_BACKOFF_S = 300.0


class FlickrAPIError(CrossviewError, RuntimeError):
    """A Flickr API call failed for good."""


class FlickrAuthError(FlickrAPIError):
    """Flickr rejected the key or secret."""


class FlickrRequestError(FlickrAPIError, ValueError):
    """Flickr refused the request's parameters (or the REST URL is wrong)."""


class FlickrUnavailableError(FlickrAPIError, ConnectionError):
    """Every retry of a call met an outage, a timeout or rate limiting."""


@dataclass(frozen=True)
class Credentials:
    """A Flickr key and secret; their values never appear in the repr."""

    key: str = field(repr=False)
    secret: str = field(repr=False)
    source: str = "environment"

    def __repr__(self) -> str:
        return f"Credentials(source={self.source!r}, key=***, secret=***)"

    def scrub(self, text: str) -> str:
        """``text`` with the key and secret replaced by ``***``."""
        for value in (self.key, self.secret):
            if value:
                text = text.replace(value, "***")
        return text


def _pick(mapping: Mapping, names: tuple[str, ...]) -> str:
    for name in names:
        value = mapping.get(name)
        if value not in (None, ""):
            return str(value).strip()
    return ""


def _read_credentials_file(path: Path) -> tuple[str, str]:
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    if not isinstance(data, dict):  # not YAML/JSON: try INI with a [flickr] section
        parser = configparser.ConfigParser()
        try:
            parser.read_string(text)
        except configparser.Error:
            return "", ""
        data = dict(parser["flickr"]) if parser.has_section("flickr") else {}
    if isinstance(data.get("flickr"), dict):
        data = data["flickr"]
    return _pick(data, ("key", "api_key", "FLICKR_API_KEY")), _pick(data, ("secret", "api_secret", "FLICKR_API_SECRET"))


def load_credentials(params: FlickrParams, environ: Mapping[str, str] | None = None) -> Credentials:
    """Key and secret from ``FLICKR_API_KEY``/``FLICKR_API_SECRET``, else from ``flickr.credentials_file``."""
    env = os.environ if environ is None else environ
    key, secret = env.get("FLICKR_API_KEY", "").strip(), env.get("FLICKR_API_SECRET", "").strip()
    if key and secret:
        return Credentials(key, secret, "environment")
    if params.credentials_file:
        path = Path(params.credentials_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"flickr.credentials_file: {path} does not exist")
        key, secret = _read_credentials_file(path)
        if key and secret:
            return Credentials(key, secret, str(path))
        raise ConfigError(
            f"flickr.credentials_file: {path} holds no key and secret; write YAML `key: ...` and "
            "`secret: ...` (or an INI [flickr] section with key = / secret =)"
        )
    raise ConfigError(
        "no Flickr credentials: export FLICKR_API_KEY and FLICKR_API_SECRET (both), or set "
        "flickr.credentials_file in params.yaml to a file with `key:` and `secret:`"
    )


class TokenBucket:
    """Allow ``rate_per_hour`` calls per hour with bursts of at most ``capacity`` calls."""

    def __init__(
        self,
        rate_per_hour: float,
        capacity: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate_per_hour <= 0 or capacity < 1:
            raise ValueError("rate_per_hour must be > 0 and capacity >= 1")
        self.rate = rate_per_hour / 3600.0  # tokens per second
        self.capacity = float(capacity)
        self._clock, self._sleep = clock, sleep
        self._tokens = self.capacity
        self._last = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def tokens(self) -> float:
        """Tokens available now."""
        with self._lock:
            self._refill()
            return self._tokens

    def try_acquire(self) -> float:
        """Take a token and return 0, or return the seconds until one is available."""
        with self._lock:
            self._refill()
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return 0.0
            return (1.0 - self._tokens) / self.rate

    def acquire(self) -> float:
        """Block until a token is taken; return the seconds waited."""
        waited = 0.0
        while (wait := self.try_acquire()) > 0:
            self._sleep(wait)
            waited += wait
        return waited


def backoff_delay(attempt: int, base_s: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: ``base * 2**attempt`` scaled by a factor in [0.5, 1.5)."""
    return min(MAX_BACKOFF_S, base_s * (2**attempt)) * (0.5 + rng.random())


class _Transient(Exception):
    """A failure worth retrying; ``str()`` says what happened (never with credentials)."""


def _http_status(message: str) -> int | None:
    match = re.search(r"Status code (\d{3})", message)
    return int(match.group(1)) if match else None


class FlickrClient:
    """Calls Flickr through ``flickrapi.FlickrAPI`` with a rate budget and retries."""

    def __init__(
        self,
        params: FlickrParams,
        credentials: Credentials | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        seed: int | None = None,
    ) -> None:
        import flickrapi

        self.params = params
        self._creds = credentials or load_credentials(params)
        self._api = flickrapi.FlickrAPI(
            self._creds.key, self._creds.secret, format="parsed-json", store_token=False, timeout=params.timeout_s
        )
        self._api.REST_URL = params.rest_url  # flickrapi reads self.REST_URL on every call
        self.bucket = TokenBucket(params.calls_per_hour, clock=clock, sleep=sleep)
        self._clock, self._sleep = clock, sleep
        self._rng = random.Random(seed)
        self._recent: deque[float] = deque()
        self.calls = 0
        self.retried = 0

    def __repr__(self) -> str:
        return f"FlickrClient(rest_url={self.params.rest_url!r}, calls_per_hour={self.params.calls_per_hour})"

    def budget_left(self) -> int:
        """Calls left in the key's hourly budget, counting the calls of the last hour."""
        now = self._clock()
        while self._recent and now - self._recent[0] > 3600:
            self._recent.popleft()
        return max(0, int(self.params.calls_per_hour) - len(self._recent))

    def call(self, method: str, **params) -> dict:
        """Call ``method`` (e.g. ``flickr.photos.search``); return the parsed JSON response."""
        last = ""
        attempts = self.params.retries + 1
        for attempt in range(attempts):
            self.bucket.acquire()
            self.calls += 1
            self._recent.append(self._clock())
            try:
                return self._invoke(method, params)
            except _Transient as err:
                last = str(err)
            if attempt + 1 < attempts:
                delay = backoff_delay(attempt, self.params.backoff_s, self._rng)
                self.retried += 1
                log.warning("%s: %s; retry %d of %d in %.1f s", method, last, attempt + 1, self.params.retries, delay)
                self._sleep(delay)
        raise FlickrUnavailableError(
            f"{method} failed {attempts} times at {self.params.rest_url} (last: {last}): Flickr is down or "
            "rate-limiting this key; rerun later (a harvest resumes where it stopped) or raise flickr.retries "
            "/ flickr.backoff_s / flickr.timeout_s"
        )

    def _invoke(self, method: str, params: dict) -> dict:
        """One HTTP call; raise ``_Transient`` for what is worth retrying, a final error otherwise."""
        try:
            reply = self._api.do_flickr_call(method, timeout=self.params.timeout_s, **params)
        except Exception as err:  # noqa: BLE001 - classified below
            failure = self._classify(method, err)
        else:
            if isinstance(reply, dict) and reply.get("stat") == "ok":
                return reply
            failure = _Transient("the response had no stat=ok")
        # Raised outside the handler, so no __context__ keeps the failed request and its signed
        # Authorization header (which carries the key) alive in tracebacks or error reporters.
        raise failure

    def _classify(self, method: str, err: Exception) -> Exception:
        """The exception to raise for a failed call (``err`` itself when it is not an API failure)."""
        import requests
        from flickrapi.exceptions import FlickrError

        if isinstance(err, FlickrError):
            return self._flickr_error(method, err)
        if isinstance(err, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                            requests.exceptions.InvalidSchema)):
            return FlickrRequestError(f"flickr.rest_url {self.params.rest_url!r} is not a usable URL")
        if isinstance(err, requests.exceptions.Timeout):
            return _Transient(f"no answer within {self.params.timeout_s:g} s (flickr.timeout_s)")
        if isinstance(err, requests.exceptions.RequestException):
            return _Transient(f"connection failed: {type(err).__name__}")
        if isinstance(err, ValueError):  # the body was not JSON: a proxy error page or a cut-off response
            return _Transient("the response was not JSON")
        return err

    def _flickr_error(self, method: str, err: Exception) -> Exception:
        code = getattr(err, "code", None)
        text = self._creds.scrub(str(err))
        if code is None:  # flickrapi raises FlickrError(code=None) for HTTP status != 200
            status = _http_status(text)
            if status is not None and (status == 429 or status >= 500):
                return _Transient(f"HTTP {status}")
            if status in (401, 403):
                return FlickrAuthError(
                    f"{method}: HTTP {status}: Flickr refused the credentials; check FLICKR_API_KEY / "
                    "FLICKR_API_SECRET (or flickr.credentials_file)"
                )
            return FlickrRequestError(
                f"{method}: HTTP {status or '?'} from {self.params.rest_url}: the request was rejected; "
                "check flickr.rest_url and the search params (flickr.bbox, dates, licences)"
            )
        code = int(code)
        if code in TRANSIENT_CODES:
            return _Transient(f"Flickr error {code}")
        if code in AUTH_CODES:
            return FlickrAuthError(
                f"{method}: Flickr rejected the API key ({text}); check FLICKR_API_KEY / FLICKR_API_SECRET "
                "(or flickr.credentials_file): the key must be an active Flickr API key"
            )
        return FlickrRequestError(
            f"{method} was refused ({text}); check the flickr section of params.yaml (bbox, "
            "min/max_upload_date, licences, min_accuracy, per_page)"
        )

    def search(self, **params) -> dict:
        """``flickr.photos.search``; returns the ``photos`` object (page, pages, total, photo)."""
        reply = self.call("flickr.photos.search", **params)
        photos = reply.get("photos")
        if not isinstance(photos, dict):
            raise FlickrAPIError("flickr.photos.search answered without a `photos` object; is flickr.rest_url Flickr's?")
        return photos

    def licences(self) -> list[dict]:
        """``flickr.photos.licenses.getInfo``: ``[{"id": ..., "name": ..., "url": ...}, ...]``."""
        reply = self.call("flickr.photos.licenses.getInfo")
        return list(reply.get("licenses", {}).get("license", []))
