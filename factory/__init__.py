"""LUMEN Factory: label-free neural semantic image synthesis as a synthetic-data factory.

Stages (one subpackage each, narrow interfaces, no Ray inside):
data -> layout / conditions -> train -> synth -> quality -> shards; Ray entry points in jobs.
"""

__version__ = "0.1.0"
