"""Generation throughput on a GPU: our Synthesizer vs plain diffusers, side by side, same run.

    python bench/bench_generate_gpu.py [--batch 8] [--iters 3] [--plain-batches 1,8]
        [--variants eager,compile+channels_last] [--json out.json]

Both sides use the same components - ``sd15-arch`` (the real SD 1.5 architecture, random
weights: throughput does not depend on the weights) in the dtype factory.models picks on a GPU,
and an untrained ControlNet built from its U-Net - at 512x1024, 20 DDIM steps, classifier-free
guidance 7.5 with a negative prompt, decoded to uint8 images:

- plain diffusers: ``StableDiffusionControlNetPipeline(...)(prompt=[...] * b, image=cond)``, for
  each b in ``--plain-batches`` (b = 1 is the usual script: one pipeline call per image);
- ours: ``Synthesizer(items, condition=cond)`` (per-sample generators, NaN checks, uint8) at
  ``--batch``, for each of ``--variants`` (see VARIANTS: compile, channels_last, CUDA graphs).

Prints one JSON line per measurement (and writes them all to ``--json``). Images/s is the
batch times the timed iterations over their wall time, after one warm-up call each.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

VARIANTS = {  # name -> SynthConfig options
    "eager": {},
    "compile": {"compile": True},
    "channels_last": {"channels_last": True},
    "compile+channels_last": {"compile": True, "channels_last": True},
    "compile+channels_last+cudagraphs": {
        "compile": True,
        "channels_last": True,
        "compile_mode": "reduce-overhead",
    },
}

PROMPT = "a photo of a city street, in dense fog"
NEGATIVE = "blurry, low quality"


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, iters: int) -> float:
    fn()  # warm-up (and compilation, when on)
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--plain-batches", default="1,8", help="batch sizes for plain diffusers")
    ap.add_argument("--variants", default="eager,compile+channels_last", help=f"ours, from {list(VARIANTS)}")
    ap.add_argument(
        "--cudnn-benchmark",
        action="store_true",
        help="torch.backends.cudnn.benchmark = True (cuDNN times its algorithms; not bit-reproducible)",
    )
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--model", default="sd15-arch", help="tiny + --device cpu: a smoke run of this script")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--size", default="512x1024", help="HxW")
    args = ap.parse_args()

    import torch

    from factory.data.sample import SampleRef
    from factory.synth.synthesizer import SynthConfig, Synthesizer, WorkItem
    from factory.synth.variants import Variant
    from factory.train.controlnet import controlnet_pipeline

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_generate_gpu needs a CUDA device (or --model tiny --device cpu --size 64x128)")
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    h, w = (int(v) for v in args.size.split("x"))
    b = args.batch
    results: list[dict] = []

    def record(name: str, seconds: float, extra: dict | None = None, batch: int | None = None) -> None:
        b_ = batch or b
        row = {
            "what": name,
            "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
            "model": args.model,
            "size": f"{h}x{w}",
            "steps": args.steps,
            "batch": b_,
            "img_s": round(b_ * args.iters / seconds, 3),
            "s_per_batch": round(seconds / args.iters, 3),
            "torch": torch.__version__,
            "cudnn_benchmark": args.cudnn_benchmark,
            **(extra or {}),
        }
        results.append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))

    def synthesizer(options: dict, components=None) -> Synthesizer:
        cfg = SynthConfig(
            base_model=args.model,
            controlnet=None,
            condition_channels=3,
            steps=args.steps,
            guidance_scale=7.5,
            scheduler="ddim",
            height=h,
            width=w,
            device=args.device,
            batch_size=b,
            **options,
        )
        return Synthesizer(cfg, components=components, controlnet=controlnet).setup()

    controlnet = None
    synth = synthesizer({})
    controlnet = synth.controlnet
    c = synth.components
    cond = torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(0))
    variant = Variant("fog", PROMPT, NEGATIVE)
    items = [
        WorkItem(SampleRef(f"ref{i:04d}", {"image": Path("unused.png")}, {}), variant, i) for i in range(b)
    ]

    # 1. Plain diffusers on the same modules (before any variant changes their memory format).
    pipe = controlnet_pipeline(c, synth.controlnet)  # the stock pipeline, DDIM, same modules
    pipe.set_progress_bar_config(disable=True)
    cond_dev = cond.to(args.device, c.dtype)

    def run_pipe(pb: int) -> None:
        for start in range(0, b, pb):  # the same b images, pb per pipeline call
            pipe(
                prompt=[PROMPT] * pb,
                negative_prompt=[NEGATIVE] * pb,
                image=cond_dev[start : start + pb],
                height=h,
                width=w,
                num_inference_steps=args.steps,
                guidance_scale=7.5,
                output_type="np",
            )

    for pb in (int(v) for v in args.plain_batches.split(",") if v):
        record(
            f"plain diffusers StableDiffusionControlNetPipeline, {pb} image(s) per call",
            timed(lambda pb=pb: run_pipe(pb), args.iters),
            {"dtype": str(c.dtype), "per_call": pb},
        )

    # 2. Our Synthesizer, one variant after the other, on the same modules.
    def run_synth(s: Synthesizer) -> None:
        out = s(items, condition=cond)
        assert all(o.error is None for o in out), [o.error for o in out if o.error][:1]

    for name in args.variants.split(","):
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        s = synth if name == "eager" else synthesizer(VARIANTS[name], components=c)
        run_synth(s)
        first_s = time.perf_counter() - t0
        record(
            f"factory Synthesizer, {name}",
            timed(lambda s=s: run_synth(s), args.iters),
            {
                "dtype": str(c.dtype),
                "first_call_s": round(first_s, 1),
                "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1)
                if args.device == "cuda"
                else None,
            },
        )


if __name__ == "__main__":
    main()
