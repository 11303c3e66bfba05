"""RecBole atomic files: ``<name>.inter`` plus optional ``.item``, ``.link`` and ``.kg``.

Every file is tab-separated with a ``field:type`` header (types ``token``, ``token_seq``,
``float``, ``float_seq``), unquoted, as RecBole writes and reads them.

* ``.inter``: ``user_id``, ``item_id``; optional ``rating`` (rating >= ``like_threshold`` ->
  ``like``, otherwise ``view``; without ratings every interaction is a ``view``) and
  ``timestamp`` (epoch seconds; without it, rows are ordered as in the file with synthetic
  timestamps 1 ms apart from the epoch, so file order decides the time split; the manifest
  says so and the import warns).
* ``.item``: ``item_id`` and any fields; text = one ``field: value`` line per non-empty
  ``token``/``token_seq`` field, in header order.
* ``.link`` (``item_id``, ``entity_id``) and ``.kg`` (``head_id``, ``relation_id``, ``tail_id``):
  an item's tags are ``entity/<entity_id>`` plus ``<relation>/<tail>`` for every triple whose head
  is its entity, the relation shortened to its last segment (``film.film.genre`` -> ``genre``).
  Entity ids keep their case.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from raymm.data.importers._parsing import (
    TSV,
    TextTable,
    first_row_per_key,
    locate_named_file,
    optional_file,
    read_text_table,
)
from raymm.data.importers._tables import (
    ImportedTables,
    blank_to_null,
    collect_tags,
    interactions_table,
    join_pieces,
    optional_rating_and_time,
)
from raymm.data.settings import ImportConfig
from raymm.errors import ImportFormatError

FIELD_TYPES: tuple[str, ...] = ("token", "token_seq", "float", "float_seq")
TEXT_TYPES: tuple[str, ...] = ("token", "token_seq")


def read(config: ImportConfig, progress: bool = False) -> ImportedTables:
    """Read RecBole atomic files named ``config.name`` (or the only ``*.inter``) into a dataset."""
    assert config.source is not None
    directory, inter_uri, name = locate_named_file(config.source, ".inter", config.name, "recbole")
    inter, _ = read_atomic(inter_uri, required=("user_id", "item_id"))
    events = optional_rating_and_time(inter, config.like_threshold)
    interactions = interactions_table(
        inter.strings("user_id"), inter.strings("item_id"), events.events, events.ts
    )

    item_uri = optional_file(directory, f"{name}.item")
    items = _items(item_uri) if item_uri else pa.table({"item_id": pa.array([], pa.string())})
    link_uri = optional_file(directory, f"{name}.link")
    kg_uri = optional_file(directory, f"{name}.kg")
    if link_uri is not None:
        # Items that only interactions mention can still carry knowledge-graph tags.
        ids = pc.unique(
            pa.concat_arrays([items.column("item_id").combine_chunks(), inter.strings("item_id")])
        )
        items = _with_ids(items, ids)
        items = items.append_column("tags", _kg_tags(ids, link_uri, kg_uri))
    present = {"inter": inter_uri, "item": item_uri, "link": link_uri, "kg": kg_uri}
    details: dict[str, Any] = {
        **events.notes,
        "files": [f"{name}.{ext}" for ext, uri in present.items() if uri],
    }
    return ImportedTables(
        name=name, items=items, interactions=interactions, details=details, warnings=events.warnings
    )


def read_atomic(uri: str, required: tuple[str, ...]) -> tuple[TextTable, dict[str, str]]:
    """Read one atomic file; columns renamed to bare field names. Returns (table, field -> type).

    Raises :class:`ImportFormatError` naming line 1 for a header field without a known type or a
    missing required field.
    """
    table = read_text_table(uri, TSV, header=True)
    types: dict[str, str] = {}
    for column in table.table.column_names:
        field, sep, kind = column.rpartition(":")
        if not sep or kind not in FIELD_TYPES:
            raise ImportFormatError(
                f"{uri}, line 1: header field {column!r} is not field:type with type in {FIELD_TYPES}"
            )
        types[field] = kind
    table.table = table.table.rename_columns(list(types))
    table.require_columns(*required)
    return table, types


def _items(uri: str) -> pa.Table:
    table, types = read_atomic(uri, required=("item_id",))
    pieces = [
        pc.binary_join_element_wise(f"{field}: ", blank_to_null(table.strings(field)), "")
        for field, kind in types.items()
        if kind in TEXT_TYPES and field != "item_id"
    ]
    ids = table.strings("item_id")
    text = join_pieces(pieces) if pieces else pa.nulls(len(ids), pa.string())
    return first_row_per_key(pa.table({"item_id": ids, "text": text}), "item_id")


def _with_ids(items: pa.Table, ids: pa.Array) -> pa.Table:
    """``items`` re-indexed to exactly ``ids`` (rows of unknown ids are bare)."""
    positions = pc.index_in(ids, value_set=items.column("item_id").combine_chunks())
    columns = {"item_id": ids}
    for name in items.column_names:
        if name != "item_id":
            columns[name] = items.column(name).combine_chunks().take(positions)
    return pa.table(columns)


def _kg_tags(item_ids: pa.Array, link_uri: str, kg_uri: str | None) -> pa.Array:
    link, _ = read_atomic(link_uri, required=("item_id", "entity_id"))
    links = pa.table({"item_id": link.strings("item_id"), "entity_id": link.strings("entity_id")})
    tag_items = [links.column("item_id").combine_chunks()]
    tags = [pc.binary_join_element_wise("entity/", links.column("entity_id").combine_chunks(), "")]
    if kg_uri is not None:
        kg, _ = read_atomic(kg_uri, required=("head_id", "relation_id", "tail_id"))
        triples = pa.table(
            {
                "entity_id": kg.strings("head_id"),
                "relation": _last_segment(kg.strings("relation_id")),
                "tail": kg.strings("tail_id"),
            }
        )
        linked = links.join(triples, keys="entity_id", join_type="inner")
        tag_items.append(linked.column("item_id").combine_chunks())
        tags.append(
            pc.binary_join_element_wise(
                linked.column("relation").combine_chunks(), linked.column("tail").combine_chunks(), "/"
            )
        )
    return collect_tags(item_ids, pa.concat_arrays(tag_items), pa.concat_arrays(tags), lower=False)


def _last_segment(relations: pa.Array) -> pa.Array:
    """``film.film.genre`` -> ``genre``; also splits on ``/`` (Freebase ``/film/film/genre``)."""
    last = pc.extract_regex(relations, r"(?P<last>[^./]*)[./]*$").field("last")
    return pc.if_else(pc.equal(last, ""), relations, last)
