"""factory.viz: one grid for every picture, its pixel layout, labels, and the PNG it writes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from factory.viz import HEADER_HEIGHT, condition_to_rgb, grid, save_grid


def _tiles(rows: int, cols: int, h: int = 8, w: int = 12) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(0)
    return [[rng.integers(0, 200, (h, w, 3), dtype=np.uint8) for _ in range(cols)] for _ in range(rows)]


def test_default_layout_pads_between_and_around():
    rows = _tiles(2, 3)
    g = grid(rows)
    assert g.shape == (2 * 8 + 3 * 2, 3 * 12 + 4 * 2, 3)
    assert np.array_equal(g[2:10, 2:14], rows[0][0]) and np.array_equal(g[12:20, 30:42], rows[1][2])
    assert (g[:2] == 255).all() and (g[:, 14:16] == 255).all()


def test_contact_sheet_layout_has_gaps_only_and_scales_tiles():
    rows = _tiles(2, 4)
    g = grid(rows, pad=2, margin=0, scale=2, interpolation=cv2.INTER_NEAREST)
    assert g.shape == (2 * 16 + 2, 4 * 24 + 3 * 2, 3)
    assert np.array_equal(g[:16, :24], np.repeat(np.repeat(rows[0][0], 2, 0), 2, 1))
    assert np.array_equal(
        grid(rows, pad=0, margin=0), np.concatenate([np.concatenate(r, 1) for r in rows], 0)
    )


def test_labels_add_a_header_band_and_a_label_column():
    rows = _tiles(2, 3)
    plain = grid(rows)
    labelled = grid(rows, col_labels=["ref", "cond", "fog"], row_labels=["a", "night"])
    label_w = 8 * len("night") + 6
    assert labelled.shape == (plain.shape[0] + HEADER_HEIGHT, plain.shape[1] + label_w, 3)
    assert (labelled[:HEADER_HEIGHT, label_w:] < 128).any()  # header text
    assert (labelled[HEADER_HEIGHT:, :label_w] < 128).any()  # row label text
    assert np.array_equal(labelled[HEADER_HEIGHT:, label_w:], plain)  # tiles where they were
    with pytest.raises(ValueError, match="1 row labels for 2 rows"):
        grid(rows, row_labels=["a"])


def test_ragged_rows_and_odd_tile_sizes():
    rows = _tiles(2, 3)
    rows[1] = rows[1][:1]
    rows[0][1] = np.zeros((30, 7, 3), np.uint8)  # resized to the first tile's size
    g = grid(rows)
    assert g.shape == (2 * 8 + 3 * 2, 3 * 12 + 4 * 2, 3)
    assert (g[2:10, 16:28] == 0).all() and (g[12:20, 16:] == 255).all()
    with pytest.raises(ValueError, match="at least one image"):
        grid([])


def test_save_grid_writes_the_grid_as_png(tmp_path):
    rows = _tiles(1, 2)
    path = save_grid(rows, tmp_path / "sub" / "g.png", col_labels=["x", "y"])
    assert path == tmp_path / "sub" / "g.png"
    assert np.array_equal(cv2.imread(str(path))[:, :, ::-1], grid(rows, col_labels=["x", "y"]))
    assert [p.name for p in path.parent.iterdir()] == ["g.png"]  # no temporary left


def test_condition_to_rgb_any_channel_count():
    one = condition_to_rgb(torch.linspace(0, 1, 12).reshape(1, 3, 4))
    assert one.shape == (3, 4, 3) and one.dtype == np.uint8 and one.min() == 0 and one.max() == 255
    assert np.array_equal(one[..., 0], one[..., 2])
    assert condition_to_rgb(np.random.default_rng(0).normal(size=(20, 3, 4))).shape == (3, 4, 3)
    with pytest.raises(ValueError, match=r"\(C,H,W\)"):
        condition_to_rgb(np.zeros((3, 4)))


def test_long_headers_are_cut_to_their_column_and_prompts_lose_their_shared_words():
    import cv2

    from factory.viz import FONT, FONT_SCALE, fit_label, grid, short_labels

    long = "a city street scene on a clear day"
    cut = fit_label(long, 128)
    assert cut.endswith("..") and long.startswith(cut[:-2].rstrip())
    assert cv2.getTextSize(cut, FONT, FONT_SCALE, 1)[0][0] <= 124
    assert fit_label("fog", 128) == "fog"
    assert short_labels([long, "a city street scene in fog", "a city street scene at night"]) == [
        "on a clear day",
        "in fog",
        "at night",
    ]
    assert short_labels(["fog"]) == ["fog"] and short_labels(["a b", "a b"]) == ["b", "b"]
    # the header band of one column stays inside that column: the next column's band is blank
    tile = np.full((16, 40, 3), 255, np.uint8)
    canvas = grid([[tile, tile]], col_labels=[long, ""], pad=2)
    second = canvas[: 2 + 16, 2 + 40 + 2 :]
    assert (second == 255).all()
