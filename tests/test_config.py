"""params.yaml loading: typed, strict, errors name the key."""

from __future__ import annotations

import pytest
import yaml

from pipeline.config import ConfigError, Params, load_params, parse_params
from tests.conftest import REPO


def test_repo_params_file_loads_and_matches_documented_names():
    p = load_params(REPO / "params.yaml")
    assert p.source == "demo"
    # names the README and other tools rely on
    assert p.tiles.gsd_m == 0.3 and p.chip.edge_m == 225 and p.filter.density_m == 10
    assert "Paris" in p.split.test_cities
    assert p.scheduler == "" and p.store == "data/store"
    assert p.s3.endpoint_url is None and p.custom.rasters is None and p.custom.photos is None


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"tiles": {"gsd_mm": 0.5}}))
    with pytest.raises(ConfigError, match=r"tiles\.gsd_mm: unknown key"):
        load_params(path)


def test_wrong_type_is_named_with_value():
    with pytest.raises(ConfigError, match=r"filter\.density_m: .*'ten'"):
        parse_params({"filter": {"density_m": "ten"}})


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


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        name = f"{prefix}{key}"
        if key not in a or key not in b:
            out.append(f"{name}: only in {'the code' if key not in a else 'params.yaml'}")
        elif isinstance(a[key], dict) and isinstance(b[key], dict):
            out += _differences(a[key], b[key], f"{name}.")
        elif a[key] != b[key]:
            out.append(f"{name}: params.yaml {a[key]!r}, code default {b[key]!r}")
    return out


def test_params_yaml_values_are_the_code_defaults():
    """One source of truth: params.yaml holds exactly the defaults of pipeline.config, value for value."""
    in_file = parse_params(yaml.safe_load((REPO / "params.yaml").read_text())).model_dump()
    assert _differences(in_file, Params().model_dump()) == []


def test_params_yaml_names_every_key():
    """Every param is written out in params.yaml (the file documents them all), none is left to a hidden default."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    keys = _differences(raw, Params().model_dump())
    assert [k for k in keys if "only in the code" in k] == []


def test_differences_name_each_disagreeing_key():
    assert _differences({"split": {"val_fraction": 0.15}}, {"split": {"val_fraction": 0.1}}) == [
        "split.val_fraction: params.yaml 0.15, code default 0.1"
    ]
