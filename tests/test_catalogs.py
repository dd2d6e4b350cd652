"""Catalogs are data with one small typed loader."""

from __future__ import annotations

import pytest

import catalogs
from pipeline.errors import CatalogError


def test_spacenet_catalog_has_the_eleven_witw_aois():
    aois = catalogs.load_spacenet()
    assert [a.aoi for a in aois] == [f"AOI_{i}_" + n for i, n in enumerate(
        ["Rio", "Vegas", "Paris", "Shanghai", "Khartoum", "Atlanta", "Moscow", "Mumbai", "San_Juan",
         "Dar_Es_Salaam", "Rotterdam"], start=1)]
    by = {a.aoi: a for a in aois}
    assert by["AOI_3_Paris"].epsg == 32631 and by["AOI_3_Paris"].band_order == (5, 3, 2)
    assert by["AOI_10_Dar_Es_Salaam"].key_status == "confirmed"
    assert {a.aoi for a in aois if a.satellite == "WorldView-2"} == {"AOI_1_Rio", "AOI_6_Atlanta", "AOI_11_Rotterdam"}
    assert by["AOI_6_Atlanta"].band_order == (3, 2, 1) and by["AOI_1_Rio"].uri.endswith("/")
    assert all(a.licence == "CC BY-SA 4.0" and "Maxar" in a.attribution for a in aois)
    assert all(a.uri.startswith("s3://spacenet-dataset/AOIs/") for a in aois)


def test_flickr_licences_cover_ids_0_to_16():
    lic = catalogs.load_licences()
    assert sorted(lic) == list(range(17))
    assert lic[11].name == "CC BY 4.0" and lic[11].url == "https://creativecommons.org/licenses/by/4.0/"
    assert not lic[0].redistributable and all(lic[i].redistributable for i in range(1, 17))


def test_custom_catalog_yaml_and_csv(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "r.yaml").write_text(
        "- {aoi: A, city: X, uri: img/a.tif, band_order: [1, 1, 1], satellite: WV2, licence: CC BY 4.0, attribution: me}\n"
    )
    (tmp_path / "cat" / "r.csv").write_text(
        "aoi,city,uri,band_order,satellite,licence,licence_url,attribution,epsg\n"
        "B,Y,s3://b/k.tif,\"3,2,1\",WV3,Company terms,https://example.com/terms,me,32631\n"
    )
    a = catalogs.load_raster_catalog(tmp_path / "cat" / "r.yaml")[0]
    assert a.uri == "cat/img/a.tif" and a.band_order == (1, 1, 1) and a.epsg is None
    assert (a.licence, a.licence_url) == ("CC BY 4.0", "https://creativecommons.org/licenses/by/4.0/")
    b = catalogs.load_raster_catalog(tmp_path / "cat" / "r.csv")[0]
    assert b.uri == "s3://b/k.tif" and b.band_order == (3, 2, 1) and b.epsg == 32631
    assert (b.licence, b.licence_url) == ("Company terms", "https://example.com/terms")


@pytest.mark.parametrize(
    "value, name",
    [(4, "CC BY 2.0"), ("4", "CC BY 2.0"), ("cc by-sa 4.0", "CC BY-SA 4.0"), ("CC-BY-SA-4.0", "CC BY-SA 4.0"),
     ("Attribution-ShareAlike 4.0 International", "CC BY-SA 4.0"), ("CC0-1.0", "Public Domain Dedication (CC0)"),
     ("https://creativecommons.org/licenses/by/4.0/", "CC BY 4.0"), ("CC-BY-3.0", "CC BY 3.0")],
)
def test_known_licences_resolve_from_flickr_ids_names_and_spdx_ids(value, name):
    lic = catalogs.find_licence(value)
    assert lic is not None and lic.name == name and lic.url.startswith("https://")


@pytest.mark.parametrize("value", ["my own terms", "17", "", None, "CC BY 9.9"])
def test_unknown_licences_are_not_guessed(value):
    assert catalogs.find_licence(value) is None


def test_raster_catalog_with_an_unknown_licence_and_no_url_fails_naming_file_row_and_column(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("aoi,city,uri,band_order,satellite,licence,attribution\n"
                    "A,X,a.tif,1 2 3,WV3,CC BY-SA 4.0,me\nB,X,b.tif,1 2 3,WV3,Company terms,me\n")
    with pytest.raises(CatalogError) as err:
        catalogs.load_raster_catalog(path)
    assert str(err.value).startswith(f"{path} row 2: column licence: 'Company terms'") and "licence_url" in str(err.value)


def test_raster_catalog_rejects_a_licence_that_forbids_redistribution(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("- {aoi: A, city: X, uri: a.tif, band_order: [1,2,3], satellite: S, "
                    "licence: All Rights Reserved, attribution: me}\n")
    with pytest.raises(CatalogError, match="entry 1: column licence: 'All Rights Reserved' does not allow"):
        catalogs.load_raster_catalog(path)


@pytest.mark.parametrize(
    "entry, message",
    [
        ("{aoi: A, city: X, uri: a.tif, satellite: S, licence: CC-BY-4.0, attribution: me}", "missing required column\\(s\\) band_order"),
        ("{aoi: A, city: X, uri: a.tif, band_order: [5, 3], satellite: S, licence: CC-BY-4.0, attribution: me}", "three"),
        ("{aoi: A, city: X, uri: a.tif, band_order: [1,2,3], satellite: S, licence: CC-BY-4.0, attribution: me, zone: 3}", "unknown"),
        ("{aoi: A, city: X, uri: a.tif, band_order: [1,2,3], satellite: S, licence: CC-BY-4.0, attribution: me, epsg: utm}", "epsg"),
    ],
)
def test_bad_catalog_rows_are_named(tmp_path, entry, message):
    path = tmp_path / "r.yaml"
    path.write_text(f"- {entry}\n")
    with pytest.raises(CatalogError, match=message) as err:
        catalogs.load_raster_catalog(path)
    assert "entry 1" in str(err.value)


def test_deny_list_and_demo_definition():
    deny = catalogs.load_deny_list(catalogs.HERE / "deny_list.yaml")
    assert "99999999@N00" in deny.owners
    demo = catalogs.load_demo()
    assert len(demo["cities"]) == 2 and len(demo["cities"][0]["tiles"]) >= 2
