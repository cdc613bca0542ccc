"""Measures of generated images: the five columns of the LUMEN paper's Table 2.

One module per measure, each a plain function over arrays/tensors plus the instrument it needs,
with a real-model path (standard weights loaded from a local path) and an offline path (a small
instrument trained on rendered procedural scenes):

- ``alignment``: segmenter mIoU / pixel accuracy against the reference's labels;
- ``depth``: scale-invariant log depth error against the reference's geometry;
- ``fid``: Fréchet distance between feature sets (Inception-V3 FID, or FD in the judge's features);
- ``diversity``: LPIPS-style distance between samples of one layout;
- ``controllability``: CLIP score with the prompt, or a weather classifier's accuracy;
- ``compare``: ``python -m factory.eval.compare`` samples each ControlNet through the
  Synthesizer and prints the five columns.
- ``sweep``: ``python -m factory.eval.sweep`` trains a ControlNet per layout variant (PCA
  components, backbone), samples one at several conditioning scales and guidance ends, scores
  every point with ``compare``'s machinery and draws the alignment-diversity Pareto front.

Submodules are imported by name (``from factory.eval.alignment import alignment``); this package
imports none of them, so that ``factory.quality.segmenter`` can use ``alignment`` without a cycle.
"""
