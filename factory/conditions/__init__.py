"""Conditioning images behind one interface: neural layout, Canny, GT semseg colours, depth, HED."""

from factory.conditions.base import ConditionError, ConditionProvider
from factory.conditions.hed import HEDNet, load_hed
from factory.conditions.providers import (
    CannyCondition,
    ConditionConfig,
    DepthCondition,
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
    "HEDNet",
    "HedCondition",
    "LayoutCondition",
    "SemsegCondition",
    "build_condition",
    "check_condition_artifacts",
    "load_hed",
]
