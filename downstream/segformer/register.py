"""Import target for mmseg configs: ``custom_imports = dict(imports=["downstream.segformer.register"])``.

Importing it registers our datasets, sampler, transforms and hook in mmseg's registries.
"""

from . import datasets, hooks, sampler, transforms  # noqa: F401
