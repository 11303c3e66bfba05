"""The kg aligner's tag filter: only tags that distinguish items make positives."""

from __future__ import annotations

from raymm.training.objective import informative_tags


def test_tags_on_more_than_the_share_of_items_are_dropped() -> None:
    # Tag 0 is on every item (a country), tag 1 on two of ten (an actor), tag 2 on one.
    tags = [[0, 1], [0, 1], [0, 2], *([[0]] * 7)]
    kept = informative_tags(tags, 3, max_share=0.2)
    assert kept[:3] == [[1], [1], [2]]
    assert all(row == [] for row in kept[3:])


def test_share_one_keeps_every_tag() -> None:
    tags = [[0, 1], [0], [0, 2]]
    assert informative_tags(tags, 3, max_share=1.0) == tags
