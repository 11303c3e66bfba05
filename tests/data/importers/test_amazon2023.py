from __future__ import annotations

import datetime as dt
import json

import pytest

from raymm.config import ImportConfig
from raymm.data.importers import import_dataset
from raymm.errors import DataError, ImportFormatError

T0 = 1_588_687_728_923  # epoch ms, as the 2023 dump stores them


def _review(user: str, parent: str, rating: float, k: int) -> dict:
    return {
        "rating": rating, "title": "t", "text": "body", "images": [], "asin": parent + "-v",
        "parent_asin": parent, "user_id": user, "timestamp": T0 + k * 1000, "helpful_vote": 0,
        "verified_purchase": True,
    }  # fmt: skip


REVIEWS = [
    _review("U1", "B01", 5.0, 0),
    _review("U2", "B01", 2.0, 1),
    _review("U1", "B02", 4.0, 2),
    _review("U3", "B03", 1.0, 3),  # B03 has no metadata
    _review("U2", "B02", 3.0, 4),
]
META = [
    {
        "main_category": "All Beauty", "title": "Howard LC0008 Leather Conditioner", "average_rating": 4.8,
        "rating_number": 10, "features": ["Restores leather", ""], "description": ["Made in USA."],
        "price": None, "images": [{"thumb": "https://t/1.jpg", "large": "https://l/1.jpg",
                                   "variant": "MAIN", "hi_res": "https://h/1.jpg"}],
        "videos": [], "store": "Howard Products", "categories": ["Beauty", "Skin Care", "beauty"],
        "details": {"Date First Available": "March 5, 2016"}, "parent_asin": "B01",
    },
    {
        "main_category": "All Beauty", "title": "Yes to Tomatoes", "features": [], "description": [],
        "price": "None", "images": [{"thumb": "https://t/2.jpg", "large": None, "hi_res": "https://h/2.jpg"}],
        "store": None, "categories": [], "details": {}, "parent_asin": "B02",
    },
    {"title": "Never reviewed", "parent_asin": "B09", "images": [], "categories": ["Cold"]},
]  # fmt: skip


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def test_reviews_and_metadata_become_items_and_events(write_source, run_import):
    source = write_source({"All_Beauty.jsonl.gz": _jsonl(REVIEWS), "meta_All_Beauty.jsonl": _jsonl(META)})
    manifest, data = run_import(source, format="amazon2023", split=(0.6, 0.2, 0.2))

    assert manifest["name"] == "All_Beauty"
    assert manifest["source"]["files"] == ["All_Beauty.jsonl.gz", "meta_All_Beauty.jsonl"]
    items = {r["item_id"]: r for r in data.items.to_pylist()}
    assert sorted(items) == ["B01", "B02", "B03", "B09"]
    b01 = items["B01"]
    assert b01["text"] == "Howard LC0008 Leather Conditioner\nRestores leather\nMade in USA."
    assert b01["image"] == "https://l/1.jpg"
    assert b01["tags"] == ["all beauty", "beauty", "howard products", "skin care"]
    assert b01["created_at"] == dt.datetime(2016, 3, 5, tzinfo=dt.UTC)
    assert items["B02"]["image"] == "https://h/2.jpg"  # no large -> hi_res
    assert items["B03"]["text"] is None and items["B03"]["tags"] is None  # reviewed, no metadata
    assert items["B09"]["tags"] == ["cold"]  # metadata only: a cold item

    splits = {s: data.interactions(s).to_pylist() for s in ("train", "validation", "test")}
    assert [len(v) for v in splits.values()] == [3, 1, 1]
    rows = [r for s in splits.values() for r in s]
    assert [r["event"] for r in rows] == ["like", "purchase", "like", "purchase", "purchase"]
    assert rows[0]["ts"] == dt.datetime.fromtimestamp(T0 / 1000, tz=dt.UTC)  # ms kept
    assert splits["test"][0]["user_id"] == "U2" and splits["test"][0]["item_id"] == "B02"


def test_image_is_a_uri_string_column(write_source, run_import):
    source = write_source({"Cat.jsonl": _jsonl(REVIEWS[:1]), "meta_Cat.jsonl": _jsonl(META[:1])})
    _, data = run_import(source, format="amazon2023")
    assert str(data.items.schema.field("image").type) == "string"


def test_malformed_json_line_names_file_and_line(write_source, tmp_path):
    lines = _jsonl(REVIEWS).splitlines(keepends=True)
    lines[2] = '{"rating": 4.0, "user_id": "U1", \n'
    source = write_source({"Cat.jsonl": "".join(lines), "meta_Cat.jsonl": _jsonl(META)})
    out = tmp_path / "out"
    with pytest.raises(ImportFormatError, match=r"Cat\.jsonl, line 3: not valid JSON"):
        import_dataset(ImportConfig(format="amazon2023", source=str(source)), str(out), progress=False)
    assert not out.exists()


def test_wrong_field_type_names_file_and_line(write_source, tmp_path):
    meta = _jsonl(META).splitlines(keepends=True)
    meta.insert(1, "\n")
    meta[2] = json.dumps({**META[1], "parent_asin": 42}) + "\n"
    source = write_source({"Cat.jsonl": _jsonl(REVIEWS), "meta_Cat.jsonl": "".join(meta)})
    with pytest.raises(ImportFormatError, match=r"meta_Cat\.jsonl, line 3: field 'parent_asin' is 42"):
        import_dataset(
            ImportConfig(format="amazon2023", source=str(source)), str(tmp_path / "out"), progress=False
        )


def test_missing_metadata_file_is_named(write_source, tmp_path):
    source = write_source({"Cat.jsonl": _jsonl(REVIEWS)})
    with pytest.raises(DataError, match=r"meta_Cat\.jsonl .*not found"):
        import_dataset(
            ImportConfig(format="amazon2023", source=str(source)), str(tmp_path / "out"), progress=False
        )
