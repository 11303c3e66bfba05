from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from raymm.config import ImportConfig
from raymm.data.importers import import_dataset
from raymm.data.importers.movielens import GENRES_100K
from raymm.errors import DataError, ImportFormatError

UTC = dt.UTC


def _flags(*on: int) -> str:
    return "|".join("1" if i in on else "0" for i in range(19))


# u.genre order: 0 unknown, 3 Animation, 4 Children's, 5 Comedy, 8 Drama, 16 Thriller.
U_ITEM = (
    f"1|Toy Story (1995)|01-Jan-1995||http://imdb/1|{_flags(3, 4, 5)}\n"
    f"2|Caf\xe9 Noir (1996)|17-Sep-1996||http://imdb/2|{_flags(8, 16)}\n"
    f"3|Unknown Film (1997)|||http://imdb/3|{_flags(0)}\n"
).encode("latin-1")
# user item rating ts: ten events one second apart, item 4 has no u.item row.
U_DATA = "".join(
    f"{u}\t{i}\t{r}\t{881250000 + k}\n"
    for k, (u, i, r) in enumerate(
        [
            (1, 1, 5),
            (1, 2, 3),
            (2, 1, 4),
            (2, 3, 1),
            (3, 2, 2),
            (3, 1, 5),
            (4, 4, 4),
            (4, 2, 5),
            (5, 3, 3),
            (5, 1, 4),
        ]
    )
)


def test_ml100k_items_events_and_time_split(write_source, run_import):
    u_genre = "".join(f"{genre}|{i}\n" for i, genre in enumerate(GENRES_100K)) + "\n"
    source = write_source({"u.data": U_DATA, "u.item": U_ITEM, "u.genre": u_genre})
    manifest, data = run_import(source, format="movielens")

    assert manifest["name"] == "ml-100k"
    assert manifest["source"]["format"] == "movielens"
    assert manifest["source"]["layout"] == "ml-100k"
    assert manifest["source"]["path"] == str(source)
    items = {r["item_id"]: r for r in data.items.to_pylist()}
    assert sorted(items) == ["1", "2", "3", "4"]
    assert items["1"]["text"] == "Toy Story (1995)\nGenres: Animation, Children's, Comedy"
    assert items["1"]["tags"] == ["animation", "children's", "comedy"]
    assert items["2"]["text"] == "Café Noir (1996)\nGenres: Drama, Thriller"  # latin-1 decoded
    assert items["3"]["tags"] is None and items["3"]["text"] == "Unknown Film (1997)"  # "unknown" is no genre
    assert items["4"]["text"] is None  # rated but absent from u.item
    assert items["1"]["created_at"] == dt.datetime(1995, 1, 1, tzinfo=UTC)
    assert items["3"]["created_at"] is None

    train, validation, test = (data.interactions(s) for s in ("train", "validation", "test"))
    assert (train.num_rows, validation.num_rows, test.num_rows) == (8, 1, 1)
    assert data.interactions("train").schema.field("ts").type == pa.timestamp("ms", tz="UTC")
    first = train.to_pylist()[0]
    assert first["user_id"] == "1" and first["item_id"] == "1" and first["event"] == "like"
    assert first["ts"] == dt.datetime.fromtimestamp(881250000, tz=UTC)
    events = [r["event"] for s in (train, validation, test) for r in s.to_pylist()]
    assert events == ["like", "view", "like", "view", "view", "like", "like", "like", "view", "like"]
    assert (
        max(train.column("ts").to_pylist())
        < validation.column("ts")[0].as_py()
        < test.column("ts")[0].as_py()
    )


def test_ml1m_layout_in_unpacked_subdirectory(write_source, run_import, tmp_path):
    write_source(
        {
            "ratings.dat": "1::10::5::978300760\n1::20::2::978300761\n2::10::3::978300762\n",
            "movies.dat": (
                "10::Star Wars: Episode IV (1977)::Action|Sci-Fi\n20::Am\xe9lie (2001)::Comedy|Romance\n"
            ).encode("latin-1"),
        },
        subdir="download/ml-1m",
    )
    manifest, data = run_import(tmp_path / "download", format="movielens", like_threshold=3.0)
    assert manifest["source"]["layout"] == "ml-1m" and manifest["name"] == "ml-1m"
    items = {r["item_id"]: r for r in data.items.to_pylist()}
    assert items["10"]["text"] == "Star Wars: Episode IV (1977)\nGenres: Action, Sci-Fi"
    assert items["20"]["tags"] == ["comedy", "romance"]
    rows = [r for s in ("train", "validation", "test") for r in data.interactions(s).to_pylist()]
    assert [r["event"] for r in rows] == ["like", "view", "like"]  # threshold 3


def test_ml_latest_with_quoted_titles_and_user_tags(write_source, run_import):
    source = write_source(
        {
            "ratings.csv": "userId,movieId,rating,timestamp\n"
            "1,1,4.0,964982703\n1,2,3.5,964981247\n2,1,0.5,964982224\n",
            "movies.csv": 'movieId,title,genres\n1,"American President, The (1995)",Comedy|Drama|Romance\n'
            "2,Heat (1995),(no genres listed)\n",
            "tags.csv": "userId,movieId,tag,timestamp\n"
            '1,1,Politics,1\n2,1," politics ",2\n2,2,"Pacino, Al",3\n',
        },
        subdir="ml-latest-small",
    )
    manifest, data = run_import(source, format="movielens")
    assert manifest["name"] == "ml-latest-small" and manifest["source"]["layout"] == "ml-latest"
    items = {r["item_id"]: r for r in data.items.to_pylist()}
    assert items["1"]["text"] == "American President, The (1995)\nGenres: Comedy, Drama, Romance"
    assert items["1"]["tags"] == ["comedy", "drama", "politics", "romance"]
    assert items["2"]["text"] == "Heat (1995)" and items["2"]["tags"] == ["pacino, al"]
    rows = sorted(
        (r for s in ("train", "validation", "test") for r in data.interactions(s).to_pylist()),
        key=lambda r: r["ts"],
    )
    assert [(r["user_id"], r["item_id"], r["event"]) for r in rows] == [
        ("1", "2", "view"),
        ("2", "1", "view"),
        ("1", "1", "like"),
    ]


def test_wrong_field_count_names_file_and_line(write_source, tmp_path):
    bad = U_DATA.splitlines(keepends=True)
    bad[2] = "2\t1\t4\n"  # line 3 lacks its timestamp
    source = write_source({"u.data": "".join(bad), "u.item": U_ITEM})
    out = tmp_path / "out"
    with pytest.raises(ImportFormatError, match=r"u\.data, line 3: expected 4 fields"):
        import_dataset(ImportConfig(format="movielens", source=str(source)), str(out), progress=False)
    assert not out.exists()


def test_non_integer_id_names_file_and_line(write_source, tmp_path):
    source = write_source(
        {
            "ratings.csv": "userId,movieId,rating,timestamp\n1,1,4.0,1\n\n1,x2,3.0,2\n",
            "movies.csv": "movieId,title,genres\n1,A,Drama\n",
        }
    )
    with pytest.raises(
        ImportFormatError, match=r"ratings\.csv, line 4: movieId is 'x2'; expected an integer"
    ):
        import_dataset(
            ImportConfig(format="movielens", source=str(source)), str(tmp_path / "out"), progress=False
        )


def test_unknown_layout_and_missing_source(write_source, tmp_path):
    source = write_source({"readme.txt": "nothing here"})
    with pytest.raises(DataError, match="no known layout"):
        import_dataset(
            ImportConfig(format="movielens", source=str(source)), str(tmp_path / "out"), progress=False
        )
    with pytest.raises(DataError, match=r"not found: .*nowhere"):
        import_dataset(
            ImportConfig(format="movielens", source=str(tmp_path / "nowhere")),
            str(tmp_path / "out"),
            progress=False,
        )
