"""Moved to factory.viz (one module for every picture a run leaves).

Kept only for factory/train/controlnet.py, which still imports ``condition_to_rgb`` and
``save_grid`` from here; delete this file once it imports them from factory.viz.
"""

from factory.viz import condition_to_rgb, save_grid

__all__ = ["condition_to_rgb", "save_grid"]
