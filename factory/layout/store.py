"""Stored neural layouts: the layout shards that ``factory.jobs.extract_layouts`` writes, read back.

Why: layouts are computed once (DESIGN.md). Extraction writes every reference's layout at the
feature grid (N x H/16 x W/16, float16, ~80 KB at 512x1024) into webdataset shards; ControlNet
training and generation read them by key and upsample on the fly, so neither recomputes the
U-Net features nor holds pixel-resolution layouts for the whole dataset in memory.

``LayoutStore(folder)`` indexes the tars once (member name -> byte range; the tar is never
extracted) and ``get(key)`` reads one ``<key>.layout.npy`` (``allow_pickle=False``). The store's
layout signature (backbone, PCA content hash, components, resolution) must equal the layout that
would compute the missing ones - a store made with another model or PCA is refused, naming it.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from factory.data.members import LAYOUT_MEMBER, META_MEMBER


class LayoutStoreError(ValueError):
    """A layout store is missing, unreadable, or was made with another layout recipe."""


class LayoutStore:
    """Random access to stored layouts by sample key (the extraction job's ``out`` or its shards)."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        shards = folder / "shards" if (folder / "shards").is_dir() else folder
        paths = sorted(shards.glob("*.tar"))
        if not paths:
            raise LayoutStoreError(
                f"{folder}: no layout shards (*.tar) here (fix: run `python -m factory.jobs.extract_layouts` "
                "and point at its out folder)"
            )
        self.folder = folder
        self.index: dict[str, tuple[Path, int, int]] = {}  # key -> (tar, offset, size)
        self._signature: dict[str, Any] | None = None
        for path in paths:
            try:
                with tarfile.open(path, "r:") as tar:
                    for m in tar.getmembers():
                        key, _, suffix = m.name.partition(".")
                        if suffix == LAYOUT_MEMBER and m.isfile():
                            self.index[key] = (path, m.offset_data, m.size)
                        elif suffix == META_MEMBER and self._signature is None and m.isfile():
                            f = tar.extractfile(m)
                            meta = json.loads(f.read()) if f else {}
                            self._signature = meta.get("layout")
            except (tarfile.TarError, OSError, json.JSONDecodeError) as e:
                raise LayoutStoreError(
                    f"{path}: unreadable layout shard ({e}); fix: delete it and rerun the extraction"
                ) from None

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, key: str) -> bool:
        return key in self.index

    @property
    def signature(self) -> dict[str, Any] | None:
        return self._signature

    def check_signature(self, expected: dict[str, Any], where: str) -> None:
        """Refuse a store made with another layout recipe (model, PCA, resolution)."""
        if self._signature is None:
            return
        from factory.layout.pca import INFORMATIONAL_FIELDS

        stored = json.loads(json.dumps(self._signature, default=str))
        wanted = json.loads(json.dumps(expected, default=str))
        diff = sorted(
            k
            for k in set(stored) | set(wanted)
            if k not in INFORMATIONAL_FIELDS and stored.get(k) != wanted.get(k)
        )
        if diff:
            raise LayoutStoreError(
                f"{where}: the layouts in {self.folder} were computed with another recipe ({', '.join(diff)} "
                "differ); fix: point at the extraction made with this model and PCA, or rerun it"
            )

    def get(self, key: str) -> torch.Tensor:
        """The stored layout of ``key``: (N, h, w) float16."""
        path, offset, size = self.index[key]
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read(size)
        arr = np.load(io.BytesIO(data), allow_pickle=False)
        if arr.dtype != np.float16 or arr.ndim != 3:
            raise LayoutStoreError(
                f"{path}: {key}.{LAYOUT_MEMBER} is {arr.dtype} {arr.shape}, expected float16 (N, h, w)"
            )
        return torch.from_numpy(arr)


__all__ = ["LayoutStore", "LayoutStoreError"]
