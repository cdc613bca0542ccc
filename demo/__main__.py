"""python -m demo --out outputs/demo [--config configs/demo.yaml] [--force STAGE ...]"""

import sys

from demo.stages import main

sys.exit(main())
