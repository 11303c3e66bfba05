"""MovieLens (GroupLens): ml-100k, ml-1m and ml-latest / ml-latest-small.

The layout is detected from the files in the source directory (or its only sub-directory, as a
downloaded zip unpacks):

* ml-100k: ``u.data`` (tab: user item rating unix_ts), ``u.item`` (``|``, latin-1: id, title,
  release date, video release date, IMDb URL, one 0/1 flag per genre of ``u.genre``);
* ml-1m: ``ratings.dat`` / ``movies.dat`` (``::``, latin-1; genres ``|``-joined);
* ml-latest(-small): ``ratings.csv``, ``movies.csv`` (quoted titles), optional ``tags.csv``.

Items: text = title, plus a ``Genres: A, B`` line when the movie has genres; tags = genres and
users' free-text tags, lower-cased, de-duplicated and sorted; ``created_at`` = ml-100k's release
date (null in the other layouts, which only carry the year inside the title). Ratings become
events: rating >= ``like_threshold`` -> ``like``, otherwise ``view``.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raymm.data import io
from raymm.data.importers._parsing import (
    CSV,
    TSV,
    Dialect,
    TextTable,
    epoch_to_timestamp,
    first_row_per_key,
    list_dirs,
    optional_file,
    read_text_table,
    require_file,
    source_location,
)
from raymm.data.importers._tables import (
    ImportedTables,
    collect_tags,
    group_into_lists,
    interactions_table,
    join_pieces,
    rating_events,
)
from raymm.data.schema import TIMESTAMP
from raymm.data.settings import ImportConfig
from raymm.errors import DataError

# u.genre of ml-100k, used when the file is absent.
GENRES_100K: tuple[str, ...] = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)  # fmt: skip
# Placeholders the datasets use for "no genre"; they are not genres.
NO_GENRE: tuple[str, ...] = ("unknown", "(no genres listed)")
LAYOUTS: dict[str, str] = {"u.data": "ml-100k", "ratings.dat": "ml-1m", "ratings.csv": "ml-latest"}

PIPE_LATIN1 = Dialect("|", encoding="latin-1")
DAT = Dialect("::", encoding="latin-1")


@dataclass
class _Movies:
    ids: pa.Array
    titles: pa.Array
    genres: pa.Array  # list<string>, source order, null where none
    created_at: pa.Array | None = None


@dataclass
class _Ratings:
    user_ids: pa.Array
    item_ids: pa.Array
    ratings: pa.Array
    ts: pa.Array


def detect_layout(directory: str) -> tuple[str, str]:
    """(layout, directory holding its files) for a MovieLens source directory.

    Looks in ``directory`` and, failing that, in its only sub-directory. Raises
    :class:`DataError` listing the marker files when no layout is recognised.
    """
    candidates = [directory]
    subdirs = list_dirs(directory)
    if len(subdirs) == 1:
        candidates.append(io.join(directory, subdirs[0]))
    for root in candidates:
        for marker, layout in LAYOUTS.items():
            if io.exists(io.join(root, marker)):
                return layout, root
    markers = ", ".join(f"{m} ({layout})" for m, layout in LAYOUTS.items())
    raise DataError(f"movielens: no known layout in {directory}; expected one of {markers}")


def read(config: ImportConfig, progress: bool = False) -> ImportedTables:
    """Read a MovieLens directory (layout auto-detected) into items and interactions."""
    assert config.source is not None
    directory, file = source_location(config.source)
    if file is not None:
        raise DataError(f"movielens: source must be the dataset directory, got the file {config.source}")
    layout, root = detect_layout(directory)
    readers = {"ml-100k": _read_100k, "ml-1m": _read_1m, "ml-latest": _read_latest}
    ratings, movies, tag_pairs = readers[layout](root)
    events = rating_events(ratings.ratings, config.like_threshold, below="view")
    interactions = interactions_table(ratings.user_ids, ratings.item_ids, events, ratings.ts)
    base = posixpath.basename(root.rstrip("/"))
    return ImportedTables(
        name=base if base.startswith("ml-") else layout,
        items=_items(movies, tag_pairs),
        interactions=interactions,
        details={
            "layout": layout,
            "events": f"rating >= {config.like_threshold} -> like, otherwise view",
        },
    )


def _ratings(table: TextTable, user: str, item: str, rating: str, timestamp: str) -> _Ratings:
    table.require_columns(user, item, rating, timestamp)
    return _Ratings(
        user_ids=table.ints(user),
        item_ids=table.ints(item),
        ratings=table.floats(rating),
        ts=epoch_to_timestamp(table.ints(timestamp), "s"),
    )


def _split_genres(genres: pa.Array, separator: str = "|") -> pa.Array:
    """``A|B`` strings as list<string>, without blanks and the datasets' no-genre placeholders."""
    lists = pc.split_pattern(genres, separator)
    values = pc.utf8_trim_whitespace(pc.list_flatten(lists))
    rows = pc.list_parent_indices(lists)
    keep = pc.and_(pc.not_equal(values, ""), pc.invert(pc.is_in(values, value_set=pa.array(NO_GENRE))))
    return group_into_lists(rows.filter(keep).to_numpy(), values.filter(keep), len(genres))


def _read_100k(root: str) -> tuple[_Ratings, _Movies, None]:
    data = read_text_table(
        require_file(root, "u.data", "movielens ml-100k"), TSV, ["user", "item", "rating", "timestamp"]
    )
    genre_file = optional_file(root, "u.genre")
    genres = GENRES_100K
    if genre_file is not None:
        listing = read_text_table(genre_file, PIPE_LATIN1, ["genre", "index"])
        order = pc.sort_indices(listing.ints("index"))
        genres = tuple(listing.strings("genre").take(order).to_pylist())
    flag_names = [f"genre_{i}" for i in range(len(genres))]
    item = read_text_table(
        require_file(root, "u.item", "movielens ml-100k"),
        PIPE_LATIN1,
        ["id", "title", "release_date", "video_release_date", "imdb_url", *flag_names],
    )
    flags = np.column_stack([_flag(item, name) for name in flag_names])
    flags[:, [g in NO_GENRE for g in genres]] = False
    rows, cols = np.nonzero(flags)  # row-major: genres stay in u.genre order
    movies = _Movies(
        ids=item.ints("id"),
        titles=item.strings("title"),
        genres=group_into_lists(rows, pa.array(genres).take(pa.array(cols)), item.num_rows),
        created_at=pc.strptime(
            pc.utf8_trim_whitespace(item.strings("release_date")),
            format="%d-%b-%Y",
            unit="ms",
            error_is_null=True,
        ).cast(TIMESTAMP),
    )
    return _ratings(data, "user", "item", "rating", "timestamp"), movies, None


def _flag(table: TextTable, name: str) -> np.ndarray:
    """A 0/1 genre flag column as booleans; :class:`ImportFormatError` naming the line of anything else."""
    values = pc.utf8_trim_whitespace(table.strings(name))
    valid = pc.is_in(values, value_set=pa.array(["0", "1"])).to_numpy(zero_copy_only=False)
    if not valid.all():
        row = int(np.flatnonzero(~valid)[0])
        raise table.error(row, f"genre flag {name} is {values[row].as_py()!r}; expected 0 or 1")
    return np.asarray(pc.equal(values, "1").to_numpy(zero_copy_only=False), dtype=bool)


def _read_1m(root: str) -> tuple[_Ratings, _Movies, None]:
    data = read_text_table(
        require_file(root, "ratings.dat", "movielens ml-1m"), DAT, ["user", "item", "rating", "timestamp"]
    )
    movie = read_text_table(
        require_file(root, "movies.dat", "movielens ml-1m"), DAT, ["id", "title", "genres"]
    )
    movies = _Movies(
        ids=movie.ints("id"), titles=movie.strings("title"), genres=_split_genres(movie.strings("genres"))
    )
    return _ratings(data, "user", "item", "rating", "timestamp"), movies, None


def _read_latest(root: str) -> tuple[_Ratings, _Movies, tuple[pa.Array, pa.Array] | None]:
    data = read_text_table(require_file(root, "ratings.csv", "movielens ml-latest"), CSV, header=True)
    movie = read_text_table(require_file(root, "movies.csv", "movielens ml-latest"), CSV, header=True)
    movie.require_columns("movieId", "title", "genres")
    movies = _Movies(
        ids=movie.ints("movieId"),
        titles=movie.strings("title"),
        genres=_split_genres(movie.strings("genres")),
    )
    tag_pairs = None
    tag_file = optional_file(root, "tags.csv")
    if tag_file is not None:
        tags = read_text_table(tag_file, CSV, header=True)
        tags.require_columns("movieId", "tag")
        tag_pairs = (tags.ints("movieId"), tags.strings("tag"))
    return _ratings(data, "userId", "movieId", "rating", "timestamp"), movies, tag_pairs


def _items(movies: _Movies, tag_pairs: tuple[pa.Array, pa.Array] | None) -> pa.Table:
    """The items table: text from title and genres, tags from genres and users' tags."""
    genre_line = pc.binary_join_element_wise("Genres: ", pc.binary_join(movies.genres, ", "), "")
    ids = movies.ids.cast(pa.string())
    genre_ids = ids.take(pc.list_parent_indices(movies.genres))
    tag_ids, tag_values = [genre_ids], [pc.list_flatten(movies.genres)]
    if tag_pairs is not None:
        tag_ids.append(tag_pairs[0].cast(pa.string()))
        tag_values.append(tag_pairs[1])
    items = pa.table(
        {
            "item_id": ids,
            "text": join_pieces([movies.titles, genre_line]),
            "tags": collect_tags(ids, pa.concat_arrays(tag_ids), pa.concat_arrays(tag_values)),
            "created_at": movies.created_at
            if movies.created_at is not None
            else pa.nulls(len(ids), TIMESTAMP),
        }
    )
    return first_row_per_key(items, "item_id")
