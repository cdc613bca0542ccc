"""The baseline a practitioner tries before generative data: classical weather augmentation.

``ClassicalWeather`` applies one of albumentations' weather-like image transforms - fog
(``RandomFog``), rain (``RandomRain``), snow (``RandomSnow``) or night (a strong darkening with
``RandomBrightnessContrast`` and ``RandomGamma``) - to a real training image and keeps its labels.
The DG benchmark's "real + classical aug" mix draws its synthetic share from the real set through
this transform, so it is compared with real + LUMEN at the same ratio, schedule and seeds.

The weather and the transform's parameters are drawn from numpy's global generator, which
mmengine seeds per run and per data-loader worker, like every other random transform of the
pipeline: a run is repeatable with its seed and worker count.
"""

from __future__ import annotations

import os
from typing import Any

import cv2
import numpy as np
from mmcv.transforms import BaseTransform
from mmseg.registry import TRANSFORMS

CLASSICAL_WEATHERS = ("fog", "rain", "snow", "night")


def weather_transforms() -> dict[str, Any]:
    """One albumentations pipeline per weather (each always applied: the mix picks the samples)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no version check over the network
    import albumentations as A

    return {
        "fog": A.Compose([A.RandomFog(fog_coef_range=(0.3, 0.7), alpha_coef=0.1, p=1.0)]),
        "rain": A.Compose([A.RandomRain(brightness_coefficient=0.8, drop_width=1, blur_value=3, p=1.0)]),
        "snow": A.Compose([A.RandomSnow(snow_point_range=(0.2, 0.4), brightness_coeff=2.0, p=1.0)]),
        "night": A.Compose(
            [
                A.RandomBrightnessContrast(
                    brightness_limit=(-0.75, -0.55), contrast_limit=(-0.4, -0.2), p=1.0
                ),
                A.RandomGamma(gamma_limit=(130, 180), p=1.0),
            ]
        ),
    }


@TRANSFORMS.register_module()
class ClassicalWeather(BaseTransform):
    """Replace ``results['img']`` (BGR uint8) by one weather-augmented copy; labels untouched.

    weathers: the weathers drawn from, uniformly (default: fog, rain, snow, night).
    """

    def __init__(self, weathers: tuple[str, ...] | list[str] = CLASSICAL_WEATHERS) -> None:
        unknown = sorted(set(weathers) - set(CLASSICAL_WEATHERS))
        if unknown or not weathers:
            raise ValueError(
                f"ClassicalWeather.weathers: {unknown or 'empty'}; allowed: {list(CLASSICAL_WEATHERS)}"
            )
        self.weathers = tuple(weathers)
        self._pipes: dict[str, Any] | None = None  # built on first use, in the worker

    def transform(self, results: dict) -> dict:
        if self._pipes is None:
            self._pipes = weather_transforms()
        weather = self.weathers[int(np.random.randint(len(self.weathers)))]
        pipe = self._pipes[weather]
        pipe.set_random_seed(int(np.random.randint(2**31 - 1)))
        rgb = cv2.cvtColor(results["img"], cv2.COLOR_BGR2RGB)
        out = pipe(image=rgb)["image"]
        results["img"] = cv2.cvtColor(np.ascontiguousarray(out, dtype=np.uint8), cv2.COLOR_RGB2BGR)
        results["classical_weather"] = weather
        return results

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weathers={list(self.weathers)})"


__all__ = ["CLASSICAL_WEATHERS", "ClassicalWeather", "weather_transforms"]
