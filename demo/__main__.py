"""python -m demo --out outputs/demo [--config configs/demo.yaml] [--force STAGE ...]"""

import sys

from demo.stages import main
from factory.cli import run_cli

# Demo._prepare_outputs: a finished stage is cached, the interrupted one keeps its partial outputs
RESUME = (
    "rerun the same command to resume: finished stages are skipped, and the interrupted one continues "
    "from its checkpoints or shards where its command resumes"
)

sys.exit(run_cli(main, on_interrupt=RESUME))
