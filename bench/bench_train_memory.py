"""Peak memory of ControlNet training as the dataset grows (layouts computed once, issue 12).

For each reference count N: a procedural city with N train scenes (64x128), the layout job
(tiny model, in-process executor) stores every layout, then ``python -m factory.train.controlnet``
trains a layout ControlNet for 2 steps reading them (``condition.layout.store``). The peak RSS
of the training process (``os.wait4``'s ru_maxrss) is recorded. ``--tree`` runs the same
training command from another checkout (e.g. the commit before the change, which cached every
layout at pixel resolution) for a side-by-side comparison; the store is then not passed.

Usage::

    python bench/bench_train_memory.py --refs 100 1000 [--tree /path/to/old/checkout]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def peak_rss_mb(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Run ``cmd``; return (peak RSS of the child in MB, seconds)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}"
        )
    return usage.ru_maxrss / 1024, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--refs", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--tree", type=Path, default=None, help="another checkout to run the training from")
    ap.add_argument("--out", type=Path, default=None, help="keep the work folder here")
    args = ap.parse_args()

    from factory.data.procedural import generate_city
    from factory.models import load_components, save_components

    work = args.out or Path(tempfile.mkdtemp(prefix="bench-mem-"))
    base = work / "base"
    if not base.exists():
        save_components(load_components("tiny"), base)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    results = []
    for n in args.refs:
        city = work / f"city{n}"
        if not city.exists():
            generate_city(city, n_train=n, n_val=0, n_acdc=0, height=64, width=128, seed=0, progress=False)
        layouts = work / f"layouts{n}"
        if not (layouts / "pca.safetensors").exists():
            extract = [sys.executable, "-m", "factory.jobs.extract_layouts", "--config",
                       str(REPO / "configs/extract/procedural.yaml"), f"out={layouts}",
                       f"dataset.root={city / 'cityscapes'}", f"layout.model={base}", "layout.device=cpu",
                       "layout.pca_samples=20000", "executor=in_process", "progress=false"]  # fmt: skip
            subprocess.run(extract, cwd=REPO, env=env, check=True, capture_output=True)
        tree = args.tree or REPO
        train = [sys.executable, "-m", "factory.train.controlnet", "--config",
                 str(REPO / "configs/train/procedural_controlnet_layout.yaml"), f"out={work / f'cn{n}-{tree.name}'}",
                 f"base_model={base}", f"data.root={city / 'cityscapes'}", "steps=2", "checkpoint_every=1000",
                 "validation.every=-1", "threads=1", f"condition.layout.model={base}",
                 f"condition.layout.pca={layouts / 'pca'}", "condition.layout.device=cpu"]  # fmt: skip
        if args.tree is None:
            train.append(f"condition.layout.store={layouts}")
        rss, seconds = peak_rss_mb(train, tree, {**env, "PYTHONPATH": str(tree)})
        results.append(
            {"refs": n, "peak_rss_mb": round(rss, 1), "seconds": round(seconds, 1), "tree": str(tree)}
        )
        print(json.dumps(results[-1]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
