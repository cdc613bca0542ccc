"""Conditioning images behind one interface: neural layout, Canny, GT semseg colours, depth, disparity, HED."""

from factory.conditions.base import ConditionError, ConditionProvider
from factory.conditions.hed import HEDNet, load_hed
from factory.conditions.providers import (
    CannyCondition,
    ConditionConfig,
    DepthCondition,
    DisparityCondition,
    HedCondition,
    LayoutCondition,
    SemsegCondition,
    build_condition,
    check_condition_artifacts,
)

__all__ = [
    "CannyCondition",
    "ConditionConfig",
    "ConditionError",
    "ConditionProvider",
    "DepthCondition",
    "DisparityCondition",
    "HEDNet",
    "HedCondition",
    "LayoutCondition",
    "SemsegCondition",
    "build_condition",
    "check_condition_artifacts",
    "load_hed",
]
