"""The Flickr client (flickrapi + rate budget + retries) against the Flickr-protocol server on loopback."""

from __future__ import annotations

import json
import random

import pytest
import requests

from pipeline.config import FlickrParams
from pipeline.errors import ConfigError
from pipeline.flickr import (
    Credentials,
    FlickrAuthError,
    FlickrClient,
    FlickrRequestError,
    FlickrUnavailableError,
    TokenBucket,
    load_credentials,
    parse_int,
)
from pipeline.flickr.client import backoff_delay
from tests.flickr_server import Fault, flickr_server, make_population

KEY, SECRET = "FAKEKEY-client-0000", "FAKESECRET-client-1111"
BBOX = "2.25,48.8,2.45,48.92"


@pytest.fixture(scope="module")
def population():
    return make_population(600, seed=3, hotspot_fraction=0.0)


@pytest.fixture()
def server(population):
    with flickr_server(population, {KEY: SECRET}) as srv:
        yield srv


def fparams(server, **kw) -> FlickrParams:
    base = {"rest_url": server.rest_url, "calls_per_hour": 1e8, "retries": 3, "backoff_s": 0.001, "timeout_s": 2.0}
    return FlickrParams(**{**base, **kw})


def client(server, key=KEY, secret=SECRET, **kw) -> FlickrClient:
    return FlickrClient(fparams(server, **kw), Credentials(key, secret), seed=1)


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.t += s


# ---------------------------------------------------------------- token bucket and backoff (no sleeps)


def test_token_bucket_spaces_calls_at_the_hourly_rate():
    clock = FakeClock()
    bucket = TokenBucket(3600, clock=clock, sleep=clock.sleep)  # one call per second
    waits = [bucket.acquire() for _ in range(5)]
    assert waits[0] == 0.0
    assert waits[1:] == pytest.approx([1.0] * 4)
    assert clock.t == pytest.approx(1004.0)


def test_token_bucket_refills_while_idle_up_to_its_capacity():
    clock = FakeClock()
    bucket = TokenBucket(720, capacity=3, clock=clock, sleep=clock.sleep)  # one call per 5 s, bursts of 3
    assert [bucket.try_acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.try_acquire() == pytest.approx(5.0)
    clock.t += 2.5
    assert bucket.try_acquire() == pytest.approx(2.5)
    clock.t += 3600  # a long idle spell banks no more than the capacity
    assert bucket.tokens() == pytest.approx(3.0)
    assert [bucket.try_acquire() for _ in range(4)][:3] == [0.0, 0.0, 0.0]


def test_token_bucket_rejects_nonsense():
    with pytest.raises(ValueError):
        TokenBucket(0)


def test_backoff_grows_exponentially_with_jitter_and_is_capped():
    rng = random.Random(0)
    for attempt in range(6):
        delays = [backoff_delay(attempt, 1.0, rng) for _ in range(200)]
        assert min(delays) >= 0.5 * 2**attempt and max(delays) < 1.5 * 2**attempt
        assert len(set(delays)) > 100  # jittered
    assert backoff_delay(30, 1.0, rng) < 1.5 * 300


def test_budget_left_counts_the_calls_of_the_last_hour(server):
    clock = FakeClock()
    c = FlickrClient(fparams(server, calls_per_hour=100), Credentials(KEY, SECRET), clock=clock, sleep=clock.sleep)
    for _ in range(3):
        c.licences()
    assert c.budget_left() == 97
    clock.t += 3601
    assert c.budget_left() == 100


# ---------------------------------------------------------------- the protocol, through the real flickrapi client


def test_flickrapi_sends_the_key_in_a_signed_oauth_header_not_as_api_key(server):
    reply = client(server).search(bbox=BBOX, min_upload_date=0, per_page=5)
    assert len(reply["photo"]) == 5
    call = server.calls[-1]
    assert call.key == KEY and call.outcome == "ok"  # the server checked the HMAC-SHA1 signature
    assert "api_key" not in call.params
    assert call.params["format"] == "json" and call.params["nojsoncallback"] == "1"


def test_a_wrong_secret_fails_the_signature_check_as_a_final_auth_error(server):
    with pytest.raises(FlickrAuthError, match="96"):
        client(server, secret="FAKESECRET-wrong").licences()
    assert len(server.calls) == 1


def test_licences_include_the_cc40_ids_and_our_catalog_knows_every_one(server):
    from catalogs import load_licences

    got = {int(lic["id"]): lic for lic in client(server).licences()}
    assert sorted(got) == list(range(17))
    catalog = load_licences()
    for i, lic in got.items():
        assert catalog[i].name == lic["name"] and catalog[i].url == lic["url"]


def test_total_and_pages_are_parsed_whether_strings_or_numbers(server):
    c = client(server)
    kinds = set()
    for _ in range(12):
        reply = c.search(bbox=BBOX, min_upload_date=0, per_page=7)
        kinds.add(type(reply["total"]))
        assert parse_int(reply["total"]) == 720 and parse_int(reply["pages"]) == 103  # 600 + in-bbox decoys
    assert kinds == {str, int}  # the server drifts like real captures do
    assert parse_int("3934") == 3934 and parse_int(None, default=-1) == -1


@pytest.mark.parametrize(
    "fault",
    [Fault("stat", code=105), Fault("stat", code=201), Fault("stat", code=0), Fault("stat", code=10),
     Fault("http", status=500), Fault("http", status=502), Fault("http", status=503), Fault("http", status=429),
     Fault("slow", delay_s=1.0), Fault("garbage")],
    ids=lambda f: f"{f.kind}-{f.code if f.kind == 'stat' else f.status if f.kind == 'http' else f.delay_s}",
)
def test_transient_failures_are_retried_until_an_answer(server, fault):
    server.state.schedule = {1: fault, 2: fault}
    c = client(server, timeout_s=0.4)
    assert len(c.licences()) == 17
    assert c.calls == 3 and c.retried == 2


def test_retries_exhausted_raise_an_unavailable_error_that_says_what_to_do(server):
    server.state.always = Fault("http", status=503)
    with pytest.raises(FlickrUnavailableError, match=r"failed 4 times.*HTTP 503.*rerun later"):
        client(server).licences()
    assert len(server.calls) == 4


def test_an_invalid_key_is_final_and_not_retried(server):
    with pytest.raises(FlickrAuthError, match=r"Invalid API Key.*FLICKR_API_KEY"):
        client(server, key="FAKEKEY-unknown").licences()
    assert len(server.calls) == 1


@pytest.mark.parametrize(
    "method, kwargs, code",
    [("flickr.photos.search", {"bbox": "2.45,48.8,2.25,48.92", "min_upload_date": 0}, "18"),  # inverted bbox
     ("flickr.photos.search", {"per_page": 5}, "3"),  # no criteria
     ("flickr.photos.doesNotExist", {}, "112")],
)
def test_bad_parameters_are_a_final_error_naming_the_params(server, method, kwargs, code):
    with pytest.raises(FlickrRequestError, match=rf"{code}.*check the flickr section of params.yaml"):
        client(server).call(method, **kwargs)
    assert len(server.calls) == 1


def test_an_http_400_is_final(server):
    server.state.always = Fault("http", status=400)
    with pytest.raises(FlickrRequestError, match="HTTP 400"):
        client(server).licences()
    assert len(server.calls) == 1


def test_an_unreachable_server_is_retried_then_reported(server):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = FlickrClient(FlickrParams(rest_url=f"http://127.0.0.1:{port}/services/rest/", retries=2, backoff_s=0.001,
                                  calls_per_hour=1e8),
                     Credentials(KEY, SECRET))
    with pytest.raises(FlickrUnavailableError, match="connection failed"):
        c.licences()


# ---------------------------------------------------------------- rate limiting against the server's own limit


def test_a_client_within_its_budget_never_meets_the_servers_rate_limit(server):
    server.state.rate_limit_per_s = 10
    c = client(server, calls_per_hour=8 * 3600)
    for _ in range(12):
        c.licences()
    assert {call.outcome for call in server.calls} == {"ok"}


def test_the_servers_429s_are_retried(server):
    server.state.rate_limit_per_s = 5
    c = client(server, retries=8, backoff_s=0.05)
    for _ in range(8):
        assert len(c.licences()) == 17
    outcomes = [call.outcome for call in server.calls]
    assert "http:429" in outcomes and outcomes.count("ok") == 8


# ---------------------------------------------------------------- credentials


def test_credentials_come_from_the_environment_first(tmp_path):
    creds = load_credentials(FlickrParams(), {"FLICKR_API_KEY": " k1 ", "FLICKR_API_SECRET": "s1"})
    assert (creds.key, creds.secret, creds.source) == ("k1", "s1", "environment")
    assert "k1" not in repr(creds) and "s1" not in repr(creds)


@pytest.mark.parametrize("text", ["key: k2\nsecret: s2\n", "flickr:\n  api_key: k2\n  api_secret: s2\n",
                                  "[flickr]\nkey = k2\nsecret = s2\n", json.dumps({"key": "k2", "secret": "s2"})])
def test_credentials_file_in_yaml_json_or_ini(tmp_path, text):
    path = tmp_path / "flickr.cred"
    path.write_text(text)
    creds = load_credentials(FlickrParams(credentials_file=str(path)), {})
    assert (creds.key, creds.secret) == ("k2", "s2")


def test_missing_credentials_say_how_to_provide_them(tmp_path):
    with pytest.raises(ConfigError, match="FLICKR_API_KEY and FLICKR_API_SECRET"):
        load_credentials(FlickrParams(), {"FLICKR_API_KEY": "only-key"})
    empty = tmp_path / "empty.yaml"
    empty.write_text("user: me\n")
    with pytest.raises(ConfigError, match="holds no key and secret"):
        load_credentials(FlickrParams(credentials_file=str(empty)), {})
    with pytest.raises(ConfigError, match="does not exist"):
        load_credentials(FlickrParams(credentials_file=str(tmp_path / "nope")), {})


# ---------------------------------------------------------------- the server itself (our peer must be right)


def _raw(server, **params) -> dict:
    params = {"api_key": KEY, "format": "json", "nojsoncallback": "1", **params}
    return requests.post(server.rest_url, data=params, timeout=5).json()


def test_server_caps_results_at_4000_and_geo_pages_at_250():
    photos = make_population(4600, seed=5, decoys=False, hotspot_fraction=0.0)
    with flickr_server(photos, {KEY: SECRET}) as srv:
        first = _raw(srv, method="flickr.photos.search", bbox=BBOX, min_upload_date="0", per_page="500",
                     sort="date-posted-asc")["photos"]
        assert int(first["total"]) == 4600 and first["perpage"] == 250 and len(first["photo"]) == 250
        assert int(first["pages"]) == 19  # pages counts the whole total, as Flickr reports it
        seen = []
        for page in range(1, 20):
            reply = _raw(srv, method="flickr.photos.search", bbox=BBOX, min_upload_date="0", per_page="250",
                         page=str(page), sort="date-posted-asc")["photos"]
            seen.append([p["id"] for p in reply["photo"]])
        assert len({i for ids in seen for i in ids}) == 4000  # only the first 4,000 are reachable
        assert seen[16] == seen[15] == seen[18]  # past the cap: the last reachable page again
        no_geo = _raw(srv, method="flickr.photos.search", min_upload_date="0", per_page="600")["photos"]
        assert no_geo["perpage"] == 500


def test_server_geo_query_without_a_limiting_agent_sees_only_the_last_12_hours(server, population):
    assert int(_raw(server, method="flickr.photos.search", bbox=BBOX)["photos"]["total"]) == 0  # all years old
    latest = max(p.dateupload for p in population if p.ispublic and p.lat is not None and p.decoy != "outside_bbox")
    server.state.now = lambda: latest + 6 * 3600
    recent = [p for p in population if p.ispublic and p.lat is not None and p.decoy != "outside_bbox"
              and p.dateupload >= latest - 6 * 3600]
    assert int(_raw(server, method="flickr.photos.search", bbox=BBOX)["photos"]["total"]) == len(recent) >= 1
    dated = _raw(server, method="flickr.photos.search", bbox=BBOX, min_upload_date="2000-01-01 00:00:00")
    assert int(dated["photos"]["total"]) > len(recent)


def test_server_answers_jsonp_without_nojsoncallback_and_111_for_other_formats(server):
    text = requests.post(server.rest_url, data={"api_key": KEY, "format": "json",
                                                "method": "flickr.photos.licenses.getInfo"}, timeout=5).text
    assert text.startswith("jsonFlickrApi(") and text.endswith(")")
    assert _raw(server, method="flickr.photos.licenses.getInfo", format="rest")["code"] == 111


def test_server_never_returns_private_photos_videos_or_screenshots(server, population):
    reply = _raw(server, method="flickr.photos.search", bbox=BBOX, min_upload_date="0", per_page="250",
                 extras="media,license", license=",".join(str(i) for i in range(17)))["photos"]
    hidden = {str(p.id) for p in population if p.decoy in ("private",)}
    total = int(reply["total"])
    assert not hidden & {p["id"] for p in reply["photo"]}
    visible = [p for p in population if p.ispublic and p.lat is not None
               and 2.25 <= p.lon <= 2.45 and 48.8 <= p.lat <= 48.92]
    assert total == len(visible)  # content_type and media default to "all"
    photos_only = _raw(server, method="flickr.photos.search", bbox=BBOX, min_upload_date="0", media="photos",
                       content_type="1")["photos"]
    assert int(photos_only["total"]) == sum(1 for p in visible if p.media == "photo" and p.content_type == 1)


def test_server_drifts_types_like_real_captures(server):
    reply = _raw(server, method="flickr.photos.search", bbox=BBOX, min_upload_date="0", per_page="250",
                 extras="geo,url_m,o_dims")["photos"]
    lat_types = {type(p["latitude"]) for p in reply["photo"]}
    acc_types = {type(p["accuracy"]) for p in reply["photo"]}
    assert lat_types == {str, float} and acc_types == {str, int}
    assert all("_" not in p["url_m"].rsplit("/", 1)[1].split("_", 1)[1] for p in reply["photo"])  # no suffix
