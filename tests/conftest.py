"""Shared pytest fixtures: paths to the read-only real data and a loopback moto S3 server."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
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


def tracked_files() -> list[str]:
    """The repo's files as a fresh clone would have them (tracked + untracked-not-ignored)."""
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout
    # dvc.lock records this checkout's own runs (README command 1 in CI); a fresh clone has none.
    return [
        line
        for line in out.splitlines()
        if line and Path(line).name != "dvc.lock" and (REPO / line).is_file()
    ]


def sh(cmd: list[str], cwd: Path, timeout: int = 1500) -> str:
    """Run a command, fail the test with its output tail when it fails; return stdout+stderr."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONHASHSEED": "0"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{out[-6000:]}"
    return out


def digests(root: Path, patterns: tuple[str, ...]) -> dict[str, str]:
    """sha256 of every file matching the glob patterns under root."""
    found = {}
    for pattern in patterns:
        for path in sorted(root.glob(pattern)):
            if path.is_file():
                found[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def repo_copy(root: Path) -> Path:
    """A copy of the repo's files as a fresh clone would have them, as its own git repo, at ``root``."""
    for rel in tracked_files():
        dst = root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dst)
    sh(["git", "init", "-q"], root)
    sh(["git", "add", "-A"], root)
    sh(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "copy"], root)
    return root


@pytest.fixture(scope="session")
def demo_repo(tmp_path_factory) -> Path:
    """A temp copy of the repo (its own git repo) after a real `dvc repro` of the demo.

    Shared by the whole session: tests that change params or verdicts must restore them.
    The first repro's log is kept in ``first_repro.log``.
    """
    root = repo_copy(tmp_path_factory.mktemp("repo"))
    (root / "first_repro.log").write_text(sh(["dvc", "repro"], root))
    return root


def pytest_collection_modifyitems(items):
    """A test that uses the shared demo repo may be the one that pays for its first `dvc repro` (the whole
    demo: every stage, training and the geotag audit included), so it gets sh()'s limit, not the default 600 s."""
    for item in items:
        if "demo_repo" in getattr(item, "fixturenames", ()) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(1800))
