"""factory.data.members: the shard member format, stated once, used by writer and readers.

(That factory.data never imports factory.shards is checked in tests/test_layering.py.)
"""

from __future__ import annotations

from factory.data import members
from factory.data import shards as reader
from factory.shards import writer


def test_member_names_are_the_design_schema():
    key = "aachen_000000_000019"
    names = [members.member_name(key, s) for s in (*members.IMAGE_SUFFIXES, *members.LABEL_MEMBERS.values())]
    names += [members.member_name(key, s) for s in (members.META_MEMBER, members.LAYOUT_MEMBER)]
    names.append(members.member_name(key, members.AGREE_MEMBER))
    assert names == [
        f"{key}.png",
        f"{key}.jpg",
        f"{key}.webp",
        f"{key}.labelids.png",
        f"{key}.instanceids.png",
        f"{key}.labeltrainids.png",
        f"{key}.disparity.png",
        f"{key}.boxes3d.json",
        f"{key}.camera.json",
        f"{key}.json",
        f"{key}.layout.npy",
        f"{key}.agree.png",
    ]
    assert members.split_member(f"{key}.labelids.png") == (key, "labelids.png")
    assert {v: k for k, v in members.MEMBER_KINDS.items()} == members.LABEL_MEMBERS


def test_writer_and_reader_share_one_definition():
    assert writer.LABEL_MEMBERS is members.LABEL_MEMBERS
    assert reader.MEMBER_KINDS is members.MEMBER_KINDS
    assert reader.IMAGE_SUFFIXES is members.IMAGE_SUFFIXES
