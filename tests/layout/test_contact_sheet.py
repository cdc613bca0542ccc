"""The contact-sheet command on the procedural city: labelled columns, one row per image, four tiles."""

from __future__ import annotations

import cv2

from factory.layout.contact_sheet import main


def test_contact_sheet_writes_a_png(city_root, tmp_path):
    out = main(
        [
            "--city",
            str(city_root),
            "--out",
            str(tmp_path / "sheet.png"),
            "--n",
            "2",
            "--scale",
            "1",
            "--n-components",
            "6",
            "--device",
            "cpu",
        ]
    )
    from factory.viz import HEADER_HEIGHT

    sheet = cv2.imread(str(out))
    assert sheet is not None
    assert sheet.shape[0] == HEADER_HEIGHT + 2 * 64 + 2  # column headers, two rows and a 2-pixel gap
    assert sheet.shape[1] == 4 * 128 + 3 * 2  # image | layout | canny | semseg
    header = sheet[:HEADER_HEIGHT]
    assert (header < 128).any() and (header > 128).mean() > 0.5  # dark text on a light band
    layout_tile = sheet[HEADER_HEIGHT : HEADER_HEIGHT + 64, 130:258]
    assert layout_tile.std() > 10  # a real visualisation, not a flat tile
