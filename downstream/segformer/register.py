"""Import target for mmseg configs: ``custom_imports = dict(imports=["downstream.segformer.register"])``.

Importing it registers our datasets, sampler, transforms and hook in mmseg's registries, and
makes mmengine read local checkpoints with downstream's safe loader (downstream.checkpoints).
"""

from downstream.checkpoints import install_mmengine_loader

from . import classical, datasets, hooks, sampler, transforms  # noqa: F401

install_mmengine_loader()
