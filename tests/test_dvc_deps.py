"""Every dvc.yaml stage lists exactly the project code and catalog files its command runs.

DVC does not follow imports: a module missing from a stage's deps leaves its outputs stale when
that module changes, and a module listed but not run reruns the stage for nothing. The imports
are read from the source (tests/project_graph.py), lazy ones included, for every dvc.yaml in
the repo (``studies/dvc.yaml`` too, once it exists).
"""

from __future__ import annotations

import copy
from pathlib import Path, PurePosixPath

import pytest

from tests.project_graph import REPO, dvc_files, load_stages, needed_files, stage_problems

STAGES = [(path, name) for path in dvc_files() for name in load_stages(path)]


@pytest.mark.parametrize(("dvc_path", "stage"), STAGES, ids=[f"{p.relative_to(REPO)}:{s}" for p, s in STAGES])
def test_stage_deps_are_the_code_its_command_runs(dvc_path: Path, stage: str):
    problems = stage_problems(dvc_path, stage, load_stages(dvc_path)[stage])
    assert problems == [], f"{dvc_path.relative_to(REPO)} stage {stage}:\n  " + "\n  ".join(problems)


def _stage(name: str) -> dict:
    return copy.deepcopy(load_stages(REPO / "dvc.yaml")[name])


def test_a_module_missing_from_deps_is_reported():
    download = _stage("download")
    download["deps"].remove("pipeline/store.py")
    assert stage_problems(REPO / "dvc.yaml", "download", download) == [
        "runs pipeline/store.py but deps do not list it"
    ]


def test_a_module_the_command_does_not_run_or_that_does_not_exist_is_reported():
    pair = _stage("pair")
    pair["deps"] += ["pipeline/heatmap.py", "pipeline/gone.py", "catalogs/deny_list.yaml"]
    assert stage_problems(REPO / "dvc.yaml", "pair", pair) == [
        "lists pipeline/heatmap.py, which its command does not run",
        "lists pipeline/gone.py, which does not exist",
    ]  # a catalog data file may be a params-named input (the deny list), so it is not judged


def test_the_deps_check_follows_lazy_imports_parent_packages_and_catalog_loaders():
    search = needed_files(["crossview search --demo data/demo --out tables/photos.parquet"], PurePosixPath("."))
    assert "pipeline/flickr/__init__.py" in search  # imported inside a function of search.py
    assert "pipeline/flickr/client.py" in search and "pipeline/__init__.py" in search
    assert "catalogs/spacenet_aois.csv" in search  # via catalogs.load_spacenet in the Flickr harvest
    assert "pipeline/cli.py" in search and "pipeline/config.py" in search
    tiles = needed_files(["crossview tiles --demo data/demo --out tables/tiles.parquet"], PurePosixPath("."))
    assert "pipeline/chipgeom.py" not in tiles  # raster.py imports it under TYPE_CHECKING only
    assert "catalogs/licences.csv" in tiles  # raster catalogs resolve the overhead licence through it


def test_deps_of_a_dvc_yaml_in_a_subfolder_are_relative_to_it(tmp_path):
    stage = {
        "cmd": "python -m pipeline.geo",
        "deps": ["../pipeline/geo.py", "../pipeline/__init__.py", "../pipeline/chip.py"],
    }
    assert stage_problems(REPO / "studies" / "dvc.yaml", "s", stage) == [
        "lists pipeline/chip.py, which its command does not run"
    ]


def test_a_command_the_check_cannot_follow_fails_it():
    stage = {"cmd": "bash run.sh", "deps": ["run.sh"]}
    (problem,) = stage_problems(REPO / "dvc.yaml", "s", stage)
    assert "crossview STAGE" in problem and "python -m MODULE" in problem
