"""Generation throughput on a GPU: our Synthesizer vs plain diffusers, side by side, same run.

    python bench/bench_generate_gpu.py [--batch 8] [--iters 3] [--compile] [--json out.json]

Both sides use the same components - ``sd15-arch`` (the real SD 1.5 architecture, random
weights: throughput does not depend on the weights) in the dtype factory.models picks on a GPU,
and an untrained ControlNet built from its U-Net - at 512x1024, 20 DDIM steps, classifier-free
guidance 7.5 with a negative prompt, decoded to uint8 images:

- plain diffusers: ``StableDiffusionControlNetPipeline(...)(prompt=[...] * batch, image=cond)``;
- ours: ``Synthesizer(items, condition=cond)`` (per-sample generators, NaN checks, uint8).

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
    ap.add_argument("--compile", action="store_true", help="also our Synthesizer with torch.compile")
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
    h, w = (int(v) for v in args.size.split("x"))
    b = args.batch
    results: list[dict] = []

    def record(name: str, seconds: float, extra: dict | None = None) -> None:
        row = {
            "what": name,
            "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
            "model": args.model,
            "size": f"{h}x{w}",
            "steps": args.steps,
            "batch": b,
            "img_s": round(b * args.iters / seconds, 3),
            "s_per_batch": round(seconds / args.iters, 3),
            "torch": torch.__version__,
            **(extra or {}),
        }
        results.append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))

    def synthesizer(compile_: bool) -> Synthesizer:
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
            compile=compile_,
        )
        return Synthesizer(cfg).setup()

    synth = synthesizer(False)
    c = synth.components
    cond = torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(0))
    variant = Variant("fog", PROMPT, NEGATIVE)
    items = [
        WorkItem(SampleRef(f"ref{i:04d}", {"image": Path("unused.png")}, {}), variant, i) for i in range(b)
    ]

    # 1. Plain diffusers on the same modules.
    pipe = controlnet_pipeline(c, synth.controlnet)  # the stock pipeline, DDIM, same modules
    pipe.set_progress_bar_config(disable=True)
    cond_dev = cond.to(args.device, c.dtype)

    def run_pipe() -> None:
        pipe(
            prompt=[PROMPT] * b,
            negative_prompt=[NEGATIVE] * b,
            image=cond_dev,
            height=h,
            width=w,
            num_inference_steps=args.steps,
            guidance_scale=7.5,
            output_type="np",
        )

    record(
        "plain diffusers StableDiffusionControlNetPipeline",
        timed(run_pipe, args.iters),
        {"dtype": str(c.dtype)},
    )
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    # 2. Our Synthesizer.
    def run_synth(s: Synthesizer = synth) -> None:
        out = s(items, condition=cond)
        assert all(o.error is None for o in out), [o.error for o in out if o.error][:1]

    seconds = timed(run_synth, args.iters)
    record(
        "factory Synthesizer",
        seconds,
        {
            "dtype": str(c.dtype),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1)
            if args.device == "cuda"
            else None,
        },
    )

    # 3. Ours with torch.compile (U-Net and ControlNet), when asked.
    if args.compile:
        del pipe
        t0 = time.perf_counter()
        compiled = synthesizer(True)
        run_synth(compiled)
        compile_s = time.perf_counter() - t0
        record(
            "factory Synthesizer, torch.compile",
            timed(lambda: run_synth(compiled), args.iters),
            {"dtype": str(c.dtype), "first_call_s": round(compile_s, 1)},
        )


if __name__ == "__main__":
    main()
