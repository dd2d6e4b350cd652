"""params.yaml loading: typed, strict, errors name the key."""

from __future__ import annotations

import pytest
import yaml

from pipeline.config import ConfigError, Params, load_params, parse_params
from tests.conftest import REPO


def test_repo_params_file_loads_and_matches_documented_names():
    p = load_params(REPO / "params.yaml")
    assert p.source == "demo"
    # names other tools rely on (issue: foundation)
    assert p.tiles.gsd_m == 0.3 and p.chip.edge_m == 225 and p.pair.density_m == 10
    assert "Paris" in p.split.test_cities
    assert p.scheduler == "" and p.store == "data/store"
    assert p.s3.endpoint_url is None and p.custom.rasters is None and p.custom.photos is None


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"tiles": {"gsd_mm": 0.5}}))
    with pytest.raises(ConfigError, match=r"tiles\.gsd_mm: unknown key"):
        load_params(path)


def test_wrong_type_is_named_with_value():
    with pytest.raises(ConfigError, match=r"pair\.density_m: .*'ten'"):
        parse_params({"pair": {"density_m": "ten"}})


def test_bad_choice_and_bad_percentiles_fail():
    with pytest.raises(ConfigError, match="source"):
        parse_params({"source": "bing"})
    with pytest.raises(ConfigError, match="tiles.percentiles"):
        parse_params({"tiles": {"percentiles": [98, 2]}})


def test_config_error_is_a_value_error_and_missing_file_gives_defaults(tmp_path):
    assert issubclass(ConfigError, ValueError)
    assert load_params(tmp_path / "absent.yaml") == Params()


def test_params_are_frozen():
    p = Params()
    with pytest.raises(Exception):
        p.tiles.gsd_m = 1.0  # type: ignore[misc]
