"""``python -m factory.jobs.generate --config <yaml> [key=value ...]``: run the generation job."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from factory.cli import RESUME_JOB, config_help, run_cli
from factory.config import load_config
from factory.jobs.generate.config import GenerateConfig
from factory.jobs.generate.run import run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m factory.jobs.generate",
        description="The generation job: every (reference, variant) -> one synthetic sample, exactly once.",
        epilog=config_help(GenerateConfig),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, help="configs/generate/<name>.yaml")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides (YAML values)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(GenerateConfig, args.config, args.overrides, config_dir="configs/generate")
    summary = run(cfg)
    print(
        json.dumps(
            {
                "out": str(summary.out),
                "shards_total": summary.shards_total,
                "shards_skipped": summary.shards_skipped,
                **({"shards_redone": summary.shards_redone} if summary.shards_redone else {}),
                "counts": summary.counts,
                **({"layouts": summary.layouts} if summary.layouts else {}),
                "actors_died": summary.actors_died,
                "accepted_total": summary.card["samples"]["accepted"],
                "seconds": round(summary.seconds, 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, on_interrupt=RESUME_JOB))
