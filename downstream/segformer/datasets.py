"""mmseg datasets for Cityscapes folders, ACDC folders, our webdataset shards, and a real+synthetic mix.

Registered in mmseg's DATASETS registry when ``downstream.segformer.register`` is imported
(configs do this with ``custom_imports``); mmseg itself is not modified. Every dataset yields
data-info dicts with the same fields, so one loading pipeline (``LoadLumenImage`` +
``LoadLumenLabels``) serves all of them:

- ``img_path`` / ``seg_map_path``: files (for shards: ``<shard>#<key>``, informational);
- ``shard_files``: for shards, ``{suffix: (shard, offset, size)}``;
- ``label_encoding``: ``"labelIds"`` (converted to trainIds on the fly) or ``"trainIds"``;
- ``key``, ``dataset``, ``weather``, ``source`` (``real``/``synth``: what the consumption log counts).

In training, a sample that fails validation when drawn is skipped and recorded, and training
goes on (``_LumenSegDataset.__getitem__``, ``hooks.SkippedSampleHook``); evaluation raises.
"""

from __future__ import annotations

import bisect
import copy
import logging
from typing import Any

from mmengine.logging import print_log
from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

from factory.data.acdc import WEATHERS as ACDC_WEATHERS
from factory.data.acdc import list_acdc
from factory.data.cityscapes import list_cityscapes
from factory.data.members import AGREE_MEMBER, MAX_MEMBER_BYTES, member_name
from factory.data.sample import DataError
from factory.quality.checks import missing_agreement

from .hooks import SKIPPED_KEY
from .labels import CLASSES, PALETTE
from .shards import LABELIDS_MEMBER, expand_shards, index_shards, read_meta

METAINFO = dict(classes=CLASSES, palette=PALETTE)


class _LumenSegDataset(BaseSegDataset):
    """Common base: Cityscapes' 19 classes; subclasses implement ``load_data_list``.

    In training, a sample whose files fail validation is skipped, not fatal (``__getitem__``).
    """

    METAINFO = METAINFO

    def __init__(self, *, source: str = "real", **kwargs: Any) -> None:
        self.source = source
        super().__init__(**kwargs)

    def _join_prefix(self) -> None:  # our datasets take explicit roots, no prefix joining
        return None

    def __getitem__(self, idx: int) -> dict:
        """Sample ``idx`` through the pipeline; in training a bad sample is replaced, not fatal.

        A sample whose files fail validation (``DataError``: labelIds or trainIds out of range,
        a map that is not what it claims, an image that does not decode) would otherwise stop a
        long run whenever it is drawn. In training it is replaced by another sample of the same
        dataset, drawn at random as mmengine does when a pipeline returns None, and named - key,
        file, reason - in the replacement's metainfo ``skipped_samples``; ``SkippedSampleHook``
        writes those to the work dir's ``bad_samples.jsonl``. Evaluation raises: a test set is
        scored whole or not at all.
        """
        if self.test_mode:
            return super().__getitem__(idx)
        if not self._fully_initialized:
            self.full_init()
        skipped: list[dict[str, str]] = []
        for _ in range(self.max_refetch + 1):
            try:
                data = self.prepare_data(idx)
            except DataError as e:
                info = self.get_data_info(idx)
                skipped.append(
                    {
                        "key": str(info.get("key")),
                        "source": self.source,
                        "path": str(e.path),
                        "reason": str(e),
                    }
                )
                print_log(
                    f"skipped bad training sample {info.get('key')!r}: {e}",
                    logger="current",
                    level=logging.WARNING,
                )
                data = None
            if data is not None:
                if skipped and "data_samples" in data:
                    data["data_samples"].set_metainfo({SKIPPED_KEY: skipped})
                return data
            idx = self._rand_another()
        raise DataError(
            skipped[-1]["path"] if skipped else self.source,
            f"no valid {self.source} training sample after {self.max_refetch + 1} draws "
            f"({len(skipped)} failed validation, the last: {skipped[-1]['reason'] if skipped else '-'})",
            "fix or remove the bad samples (see bad_samples.jsonl in the work dir)",
        )


@DATASETS.register_module()
class CityscapesLabelIdsDataset(_LumenSegDataset):
    """Official Cityscapes folders: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with
    ``gtFine/<split>/<city>/*_gtFine_labelIds.png``, converted to trainIds while loading (so no
    ``createTrainIdLabelImgs`` preprocessing pass is needed)."""

    def __init__(self, data_root: str, split: str = "train", cities: list[str] | None = None, **kwargs: Any):
        self.split = split
        self.cities = cities
        super().__init__(data_root=data_root, **kwargs)

    def load_data_list(self) -> list[dict]:
        refs = list_cityscapes(self.data_root, self.split, cities=self.cities).refs
        out = []
        for ref in refs:
            if "labelids" not in ref.paths:
                raise DataError(
                    ref.paths["image"], "no gtFine labelIds file for this image", "restore gtFine/"
                )
            out.append(
                dict(
                    img_path=str(ref.paths["image"]),
                    seg_map_path=str(ref.paths["labelids"]),
                    label_encoding="labelIds",
                    key=ref.key,
                    dataset="cityscapes",
                    weather="clear",
                    source=self.source,
                    seg_fields=[],
                    reduce_zero_label=False,
                    label_map=None,
                )
            )
        return out


@DATASETS.register_module()
class ACDCDataset(_LumenSegDataset):
    """ACDC folders for one adverse weather: ``rgb_anon/<weather>/<split>/<seq>/*_rgb_anon.png``
    with ``gt/<weather>/<split>/<seq>/*_gt_labelTrainIds.png`` (trainIds, used as they are)."""

    def __init__(self, data_root: str, weather: str, split: str = "val", **kwargs: Any):
        if weather not in ACDC_WEATHERS:
            raise ValueError(f"ACDCDataset.weather: {weather!r} is not one of {list(ACDC_WEATHERS)}")
        self.weather = weather
        self.split = split
        super().__init__(data_root=data_root, **kwargs)

    def load_data_list(self) -> list[dict]:
        refs = list_acdc(self.data_root, self.split, weathers=(self.weather,)).refs
        out = []
        for ref in refs:
            if "labeltrainids" not in ref.paths:
                raise DataError(
                    ref.paths["image"],
                    "no gt_labelTrainIds file for this image",
                    f"restore gt/{self.weather}/",
                )
            out.append(
                dict(
                    img_path=str(ref.paths["image"]),
                    seg_map_path=str(ref.paths["labeltrainids"]),
                    label_encoding="trainIds",
                    key=ref.key,
                    dataset="acdc",
                    weather=self.weather,
                    source=self.source,
                    seg_fields=[],
                    reduce_zero_label=False,
                    label_map=None,
                )
            )
        return out


@DATASETS.register_module()
class LumenShardDataset(_LumenSegDataset):
    """Our webdataset shards (real references or synthetic variants, one schema): image
    ``<key>.png|jpg|webp``, labels ``<key>.labelids.png`` (labelIds), metadata ``<key>.json``.
    A synthetic image smaller than its labels is resized up to them by ``LoadLumenImage``.
    ``max_member_bytes`` bounds one member's declared size (checked before reading it); a shard
    whose samples differ from its job's manifest, or a key in two shards, is an error
    (``index_shards``).

    ``agreement_ignore`` (off by default): pixels where the factory's judge disagreed with the
    reused label (``<key>.agree.png`` == 0, written when the generation job had
    ``quality.segmenter``) become ignore (255) in training - generated images drift from their
    masks, mostly at boundaries, and those pixels would teach the wrong class. A sample without
    the member is an error naming it (regenerate with a judge, or turn the switch off)."""

    def __init__(
        self,
        shards: str | list[str],
        source: str = "synth",
        limit: int | None = None,
        max_member_bytes: int = MAX_MEMBER_BYTES,
        agreement_ignore: bool = False,
        **kwargs: Any,
    ):
        self.shards = shards
        self.limit = limit
        self.max_member_bytes = max_member_bytes
        self.agreement_ignore = agreement_ignore
        super().__init__(source=source, data_root=None, **kwargs)

    def load_data_list(self) -> list[dict]:
        out = []
        for s in index_shards(expand_shards(self.shards), self.max_member_bytes):
            meta = read_meta(s)
            files = {suf: (m.shard, m.offset, m.size) for suf, m in s.files.items()}
            if self.agreement_ignore and AGREE_MEMBER not in files:
                raise missing_agreement(f"{s.shard}:{member_name(s.key, AGREE_MEMBER)}")
            out.append(
                dict(
                    img_path=f"{s.shard}#{s.key}",
                    seg_map_path=f"{s.shard}#{member_name(s.key, LABELIDS_MEMBER)}",
                    shard_files=files,
                    image_suffix=s.image_suffix,
                    label_encoding="labelIds",
                    agreement_ignore=self.agreement_ignore,
                    key=s.key,
                    dataset="shards",
                    weather=str(meta.get("variant", "clear")),
                    source_key=str(meta.get("source_key", s.key)),
                    source=self.source,
                    seg_fields=[],
                    reduce_zero_label=False,
                    label_map=None,
                )
            )
            if self.limit is not None and len(out) >= self.limit:
                return out
        return out


@DATASETS.register_module()
class MixedDataset:
    """Real and synthetic datasets side by side (indices ``[0, n_real)`` then the synthetic ones).

    The real:synthetic *ratio* is honoured by ``MixedSampler`` (which reads ``ratio`` and the
    index split from here); the consumption hook logs what was actually drawn from each.
    ``ratio`` is the fraction of training samples taken from ``synth``.
    """

    def __init__(self, real: dict | Any, synth: dict | Any, ratio: float = 0.5, lazy_init: bool = False):
        if not 0.0 < ratio < 1.0:
            raise ValueError(
                f"MixedDataset.ratio: {ratio} must be in (0, 1) (fraction of synthetic samples; use the real dataset alone for 0)"
            )
        self.ratio = float(ratio)
        self.sources = ("real", "synth")
        self._cfgs = (real, synth)
        self.datasets: list[Any] = []
        self._fully_initialized = False
        if not lazy_init:
            self.full_init()

    def full_init(self) -> None:
        if self._fully_initialized:
            return
        self.datasets = []
        for name, c in zip(self.sources, self._cfgs):
            if isinstance(c, dict):  # the slot decides what the consumption log calls it
                c = {**c, "source": name}
            self.datasets.append(DATASETS.build(c) if isinstance(c, dict) else c)
        for ds in self.datasets:
            if hasattr(ds, "full_init"):
                ds.full_init()
        for name, ds in zip(self.sources, self.datasets):
            if len(ds) == 0:
                raise DataError(name, f"the {name} part of MixedDataset is empty", "check its paths")
        self.cumulative = [len(self.datasets[0]), len(self.datasets[0]) + len(self.datasets[1])]
        self._fully_initialized = True

    @property
    def metainfo(self) -> dict:
        return copy.deepcopy(self.datasets[0].metainfo)

    def __len__(self) -> int:
        return self.cumulative[-1]

    def _locate(self, idx: int) -> tuple[int, int]:
        part = bisect.bisect_right(self.cumulative, idx)
        return part, idx - (0 if part == 0 else self.cumulative[part - 1])

    def get_data_info(self, idx: int) -> dict:
        part, local = self._locate(idx)
        return self.datasets[part].get_data_info(local)

    def __getitem__(self, idx: int) -> Any:
        part, local = self._locate(idx)
        return self.datasets[part][local]
