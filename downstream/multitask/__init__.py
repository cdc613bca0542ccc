"""Multi-task perception on real + synthetic data: semantics, depth and 3D vehicle boxes.

The synthetic shards reuse each reference's disparity, camera and gtBbox3d bytes; this package
trains one network on all three tasks (train.py), scores it with the official evaluators
(evaluate.py) and draws what it predicts (visualise.py). downstream.benchmarks.multitask
compares real, LUMEN and real + LUMEN training data.
"""
