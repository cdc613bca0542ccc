"""factory.data.members: the shard member format, stated once, used by writer and readers."""

from __future__ import annotations

import ast
from pathlib import Path

import factory
from factory.data import members
from factory.data import shards as reader
from factory.shards import writer

PACKAGE = Path(factory.__file__).parent


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


def _imported_modules(folder: Path) -> set[str]:
    """Every module imported anywhere in ``folder``'s files, lazy imports inside functions too."""
    found = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
    return found


def test_data_does_not_import_shards():
    """The dependency runs one way: factory.shards uses factory.data, never the reverse."""
    assert not {m for m in _imported_modules(PACKAGE / "data") if m.startswith("factory.shards")}
