"""Layout extraction throughput: images/s of NeuralLayout.compute_stored (VAE + U-Net to layer 8 + PCA).

    python bench/bench_layout.py                 # tiny model, 64x128, on this CPU
    python bench/bench_layout.py --sd15          # also sd15-arch at 512x1024 (needs a CUDA device)
    python bench/bench_layout.py --sd15 --variants eager,compile,compile+channels_last

Appends one dated row per measurement (machine, command, settings, images/s) to the
"Layout extraction" section of docs/benchmarks.md. The sd15-arch goal on an H100 is
>= 115 img/s (compute floor about 230 img/s).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from factory.layout import NeuralLayout, SDUNetBackbone, fit_pca, sample_counts  # noqa: E402
from factory.layout.pca import draw_vectors  # noqa: E402
from factory.models import load_components  # noqa: E402

SECTION = "## Layout extraction"
HEADER = (
    "| date | machine | model | input | dtype | batch | images/s | command |\n"
    "|---|---|---|---|---|---|---|---|\n"
)


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


VARIANTS = {  # name -> SDUNetBackbone options (layout.compile / layout.channels_last)
    "eager": {},
    "compile": {"compile": True},
    "channels_last": {"channels_last": True},
    "compile+channels_last": {"compile": True, "channels_last": True},
}


def bench(
    ref: str, size: tuple[int, int], batch: int, iters: int, device: str, variant: str = "eager"
) -> tuple[float, str, float]:
    """(images/s, dtype, seconds of the first call - compilation included) of one variant."""
    comps = load_components(ref, device=device)
    backbone = SDUNetBackbone(comps, micro_batch=batch, **VARIANTS[variant])
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(batch)]
    # a PCA fitted on the benchmark images themselves: the apply cost is what matters here
    keys = [f"b{i}" for i in range(batch)]
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(comps.device)
    t_first = time.perf_counter()
    feats = backbone(x)  # the first call compiles, when asked
    first_s = time.perf_counter() - t_first
    vectors = draw_vectors(feats, keys, sample_counts(keys, 4096, 0), 0)
    pca = fit_pca(vectors, 20, {"signature": backbone.signature()})
    layout = NeuralLayout(backbone, pca)
    layout.compute_stored(images)  # warm-up
    if comps.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        layout.compute_stored(images)
    if comps.device.type == "cuda":
        torch.cuda.synchronize()
    rate = batch * iters / (time.perf_counter() - t0)
    return rate, str(comps.dtype).replace("torch.", ""), first_s


def write_row(path: Path, row: str) -> None:
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    if SECTION not in text:
        text = (
            text.rstrip("\n")
            + f"\n\n{SECTION}\n\n`python bench/bench_layout.py` (tiny on CPU; `--sd15` adds sd15-arch at 512x1024 on a GPU).\n\n{HEADER}"
        )
    start = text.index(SECTION)
    nxt = text.find("\n## ", start + len(SECTION))
    end = len(text) if nxt == -1 else nxt + 1
    section = text[start:end].rstrip("\n") + "\n" + row + "\n"
    if nxt != -1:
        section += "\n"
    path.write_text(text[:start] + section + text[end:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--sd15", action="store_true", help="also sd15-arch at 512x1024 (CUDA only)")
    p.add_argument("--sd15-batch", type=int, default=16)
    p.add_argument(
        "--variants",
        default="eager",
        help=f"comma-separated sd15-arch variants, from {list(VARIANTS)} (each one a fresh model)",
    )
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    command = "python bench/bench_layout.py " + shlex.join(sys.argv[1:])
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown --variants {unknown}; choose from {list(VARIANTS)}")
    runs = [("tiny", (64, 128), args.batch, "cpu", "eager")]
    if args.sd15:
        if not torch.cuda.is_available():
            print("sd15-arch at 512x1024 skipped: no CUDA device")
        else:
            runs += [("sd15-arch", (512, 1024), args.sd15_batch, "cuda", v) for v in variants]
    for ref, size, batch, device, variant in runs:
        rate, dtype, first_s = bench(ref, size, batch, args.iters, device, variant)
        if variant != "eager":
            dtype += f" + {variant} (first call {first_s:.0f} s)"
        if device == "cuda":
            where = machine()
        else:  # shared machines: the load average says how much of the CPU the run really had
            where = (
                f"{platform.machine()} CPU ({torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f})"
            )
        row = (
            f"| {dt.date.today().isoformat()} | {where} | {ref} | {size[0]}x{size[1]} | {dtype} | {batch} "
            f"| {rate:.1f} | `{command.strip()}` |"
        )
        print(row)
        if not args.no_write:
            write_row(args.out, row)


if __name__ == "__main__":
    main()
