"""`crossview review` in a real headless Chromium: keyboard verdicts, reload, and `dvc repro` applying them.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and selenium; the
tests skip, saying why, without them. Set ``CROSSVIEW_SCREENSHOT=docs/review.png`` to refresh the
README's screenshot from the demo run.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.review.dataset import filter_kinds
from tests.conftest import REPO, digests, sh
from tests.test_review_api import make_review_data

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--window-size=1440,1000",
)
SPLITS = ("train", "val", "test")


@pytest.fixture()
def browser(tmp_path: Path):
    """A headless Chromium driven by selenium, with a fresh profile."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    for exe in (CHROMIUM, CHROMEDRIVER):
        if not exe.exists():
            pytest.skip(f"{exe} is missing: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _review_cmd() -> list[str]:
    from pipeline.cli import COMMANDS

    if "review" in COMMANDS:
        return ["crossview", "review"]
    # Until pipeline/cli.py registers the command: the same configure/main through argparse.
    code = (
        "import argparse, sys; import pipeline.review as r; from pipeline.config import load_params; "
        "p = argparse.ArgumentParser(); r.configure(p); sys.exit(r.main(load_params(), p.parse_args(sys.argv[1:])))"
    )
    return [sys.executable, "-c", code]


@contextlib.contextmanager
def review_server(root: Path, curator: str, log_path: Path) -> Iterator[str]:
    """`crossview review` on a free port in ``root`` (its output in ``log_path``); yields its base URL."""
    port = _free_port()
    log = log_path.open("w")
    proc = subprocess.Popen(
        [*_review_cmd(), "--port", str(port), "--curator", curator], cwd=root, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/summary", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"review server did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def press(driver, *keys: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    for key in keys:
        ActionChains(driver).send_keys(key).perform()


def wait_until(driver, condition, what: str, timeout: float = 15):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: condition(d), message=f"waiting for {what}")


def card_verdict(driver, photo_id: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, f'.card[data-id="{photo_id}"] .verdict').text.strip()


def cursor_id(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, ".card.cursor").get_attribute("data-id")


def open_queue(driver, url: str, query: str) -> list[str]:
    """Open a queue page and return its card ids in order (the cursor starts on the first)."""
    from selenium.webdriver.common.by import By

    driver.get(f"{url}/?{query}")
    driver.execute_script("sessionStorage.clear()")
    driver.get(f"{url}/?{query}")
    wait_until(
        driver,
        lambda d: d.find_elements(By.CSS_SELECTOR, ".card.cursor") or d.find_elements(By.CSS_SELECTOR, ".empty"),
        "the grid",
    )
    return [c.get_attribute("data-id") for c in driver.find_elements(By.CSS_SELECTOR, ".card")]


def verdict_on(driver, photo_id: str, ids: list[str], key: str, label: str) -> None:
    """Move the cursor to ``photo_id`` with j/k and press the verdict ``key``; wait until it shows as saved."""
    here = ids.index(cursor_id(driver))
    steps = ids.index(photo_id) - here
    press(driver, *(["j"] * steps if steps > 0 else ["k"] * -steps))
    assert cursor_id(driver) == photo_id
    press(driver, key)
    wait_until(driver, lambda d: card_verdict(d, photo_id) == label, f"{label} on {photo_id}")


def _verdict_rows(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_keyboard_review_saves_undoes_and_survives_a_reload(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    make_review_data(tmp_path)
    (tmp_path / "params.yaml").write_text("{}\n")
    with review_server(tmp_path, "carol", tmp_path / "server.log") as url:
        ids = open_queue(browser, url, "queue=model_dropped&per_page=100")
        assert len(ids) > 6
        verdict_on(browser, ids[0], ids, "1", "Keep")
        assert cursor_id(browser) == ids[1]  # a single verdict moves on
        press(browser, "n")
        browser.switch_to.active_element.send_keys("blurry, but a street", Keys.ENTER)
        press(browser, "2")
        wait_until(browser, lambda d: card_verdict(d, ids[1]).startswith("Drop: indoor"), "drop_indoor with a note")
        press(browser, "x", "j", "x", "3")  # bulk: ids[2] and ids[3]
        for i in ids[2:4]:
            wait_until(browser, lambda d, i=i: card_verdict(d, i) == "Drop: irrelevant", f"bulk verdict on {i}")
        press(browser, "u")  # undo the bulk verdict: both rows retracted
        for i in ids[2:4]:
            wait_until(browser, lambda d, i=i: card_verdict(d, i) == "", f"undo on {i}")
        press(browser, Keys.ENTER)
        wait_until(
            browser,
            lambda d: (
                "Decisions".upper() in d.find_element(By.ID, "focus").text.upper()
                and d.find_element(By.ID, "f-decisions").text.strip() != ""
            ),
            "the focus view",
        )
        assert "indoor" in browser.find_element(By.ID, "f-decisions").text
        press(browser, Keys.ESCAPE)

        browser.refresh()
        wait_until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".card.cursor"), "the reloaded grid")
        assert card_verdict(browser, ids[0]) == "Keep"
        assert card_verdict(browser, ids[1]) == "Drop: indoor blurry, but a street"
        assert card_verdict(browser, ids[2]) == card_verdict(browser, ids[3]) == ""
        assert "2 reviewed of 40" in browser.find_element(By.ID, "summary").text
    rows = _verdict_rows(tmp_path / "review/verdicts.csv")
    assert [(r["id"], r["verdict"], r["curator"], r["note"]) for r in rows] == [
        (ids[0], "keep", "carol", ""),
        (ids[1], "drop_indoor", "carol", "blurry, but a street"),
    ]


def _manifest_ids(root: Path) -> set[str]:
    return set().union(
        *(set(pq.read_table(root / f"manifests/{s}.parquet", columns=["id"])["id"].to_pylist()) for s in SPLITS)
    )


def _only_model_drops(url: str, items: list[dict]) -> str:
    """The first model-dropped pair that no rule drops (so a curator keep puts it back in a manifest)."""
    for it in items:
        pair = _get(f"{url}/api/pair/{it['id']}")
        if all(d["kept"] or d["kind"] == "model" for d in pair["decisions"]):
            return it["id"]
    raise AssertionError("the demo has no pair dropped by a model filter alone")


def _ran(log: str) -> set[str]:
    """Stages `dvc repro` ran or restored from its run cache (same inputs as an earlier run)."""
    return {
        line.split("'")[1]
        for line in log.splitlines()
        if line.startswith("Running stage '") or (line.startswith("Stage '") and "is cached" in line)
    }


def _paths(entries: list) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]


def downstream_of(dvc_yaml: Path, path: str) -> set[str]:
    """The stages that depend on ``path``, directly or through another stage's outputs."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]

    def touches(dep: str, changed: set[str]) -> bool:
        return any(dep == c or dep.startswith(c + "/") or c.startswith(dep + "/") for c in changed)

    changed, found = {path}, set()
    while True:
        new = {
            name
            for name, st in stages.items()
            if name not in found and any(touches(d, changed) for d in _paths(st.get("deps")))
        }
        if not new:
            return found
        found |= new
        changed |= {o for name in new for key in ("outs", "metrics", "plots") for o in _paths(stages[name].get(key))}


def _curate_demo(browser, url: str, in_manifests: set[str], shot: Path) -> list[tuple[str, str]]:
    """By keyboard: keep a pair only a model dropped (once model filters are registered) and drop two kept pairs."""
    from selenium.webdriver.common.by import By

    done = []
    if any(kind == "model" for kind in filter_kinds().values()):
        keep_id = _only_model_drops(url, _get(f"{url}/api/queue?queue=model_dropped&per_page=500")["items"])
        assert keep_id not in in_manifests
        verdict_on(browser, keep_id, open_queue(browser, url, "queue=model_dropped&per_page=500"), "1", "Keep")
        done.append((keep_id, "keep"))
    ids = open_queue(browser, url, "queue=kept_sample&seed=0&per_page=24")
    irrelevant, wrong = ids[1], ids[2]
    assert {irrelevant, wrong} <= in_manifests
    verdict_on(browser, irrelevant, ids, "3", "Drop: irrelevant")
    verdict_on(browser, wrong, ids, "4", "Drop: wrong location")
    done += [(irrelevant, "drop_irrelevant"), (wrong, "drop_wrong_location")]
    browser.refresh()
    wait_until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".card.cursor"), "the reloaded grid")
    assert card_verdict(browser, irrelevant) == "Drop: irrelevant"
    assert card_verdict(browser, wrong) == "Drop: wrong location"
    assert f"{len(done)} not applied yet: run dvc repro" in browser.find_element(By.ID, "summary").text
    _screenshot(browser, shot)
    return done


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_review_on_the_demo_then_dvc_repro_applies_the_verdicts(browser, demo_repo, tmp_path):
    verdicts = demo_repo / "review/verdicts.csv"
    original = verdicts.read_bytes()
    outputs = ("tables/*.parquet", "manifests/*", "reports/*.json")
    before, in_manifests = digests(demo_repo, outputs), _manifest_ids(demo_repo)
    try:
        with review_server(demo_repo, "dana", tmp_path / "server.log") as url:
            done = _curate_demo(browser, url, in_manifests, tmp_path / "review-page.png")
        rows = _verdict_rows(verdicts)
        assert [(r["id"], r["verdict"], r["curator"]) for r in rows] == [(i, v, "dana") for i, v in done]

        ran = _ran(sh(["dvc", "repro"], demo_repo))
        may_rerun = downstream_of(demo_repo / "dvc.yaml", "review/verdicts.csv")
        assert not may_rerun & {"demo", "search", "download", "tiles", "pair", "chip", "classify"}, may_rerun
        assert {"filter", "manifest"} <= ran <= may_rerun, (ran, may_rerun)
        kept = {i for i, v in done if v == "keep"}
        assert _manifest_ids(demo_repo) == (in_manifests | kept) - {i for i, v in done if v != "keep"}
    finally:
        verdicts.write_bytes(original)
        sh(["dvc", "repro"], demo_repo)
    assert digests(demo_repo, outputs) == before


def _screenshot(browser, shot: Path) -> None:
    """Save the review page as PNG; copy it to $CROSSVIEW_SCREENSHOT (e.g. docs/review.png) when set."""
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    target = os.environ.get("CROSSVIEW_SCREENSHOT")
    if target:
        shutil.copyfile(shot, REPO / target)


def test_the_suspect_location_queue_shows_the_audit_and_4_drops_a_pair(browser, tmp_path):
    from selenium.webdriver.common.by import By

    from tests.test_audit import make_audit_review_data

    order = make_audit_review_data(tmp_path)
    (tmp_path / "params.yaml").write_text("{}\n")
    with review_server(tmp_path, "erin", tmp_path / "server.log") as url:
        ids = open_queue(browser, url, "queue=suspect_location&per_page=100")
        assert ids == order
        card = browser.find_element(By.CSS_SELECTOR, f'.card[data-id="{ids[0]}"]')
        images = {img.get_attribute("alt").rsplit(" ", 1)[0]: img for img in card.find_elements(By.TAG_NAME, "img")}
        assert set(images) == {"photo", "overhead chip", "chip at the best point", "audit heat map"}
        for name, img in images.items():  # every image loaded (the best-point chip is cut from the tile)
            wait_until(browser, lambda d, img=img: d.execute_script(
                "return arguments[0].complete && arguments[0].naturalWidth > 0", img), f"the {name} image")
        assert "best point 159 m SW of the geotag" in card.text
        verdict_on(browser, ids[1], ids, "4", "Drop: wrong location")
    rows = _verdict_rows(tmp_path / "review/verdicts.csv")
    assert [(r["id"], r["verdict"], r["curator"]) for r in rows] == [(ids[1], "drop_wrong_location", "erin")]
