"""The contact-sheet command on the procedural city: one row per image, four tiles per row."""

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
    sheet = cv2.imread(str(out))
    assert sheet is not None
    assert sheet.shape[0] == 2 * 64 + 2  # two rows and a 2-pixel gap
    assert sheet.shape[1] == 4 * 128 + 3 * 2  # image | layout | canny | semseg
    layout_tile = sheet[:64, 130:258]
    assert layout_tile.std() > 10  # a real visualisation, not a flat tile
