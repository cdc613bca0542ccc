"""Neural layouts: backbone features (SD U-Net hooks, DINOv2) -> exact PCA -> N-channel layout."""

from factory.layout.backbones import (
    Backbone,
    Dinov2Backbone,
    LayoutError,
    SDUNetBackbone,
    decoder_layer_channels,
    decoder_layer_modules,
)
from factory.layout.neural import (
    LayoutConfig,
    NeuralLayout,
    batch_features,
    batch_vectors,
    build_backbone,
    fit_layout_pca,
    images_to_tensor,
    layout_to_rgb,
    pca_meta,
    read_image,
    resize_image,
)
from factory.layout.pca import (
    PCAArtifact,
    StreamingPCA,
    draw_vectors,
    fit_pca,
    sample_counts,
    sample_positions,
    stable_hash,
)

__all__ = [
    "Backbone",
    "Dinov2Backbone",
    "LayoutConfig",
    "LayoutError",
    "NeuralLayout",
    "PCAArtifact",
    "SDUNetBackbone",
    "StreamingPCA",
    "batch_features",
    "batch_vectors",
    "build_backbone",
    "decoder_layer_channels",
    "decoder_layer_modules",
    "draw_vectors",
    "fit_layout_pca",
    "fit_pca",
    "images_to_tensor",
    "layout_to_rgb",
    "pca_meta",
    "read_image",
    "resize_image",
    "sample_counts",
    "sample_positions",
    "stable_hash",
]
