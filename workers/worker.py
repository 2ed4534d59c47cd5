#!/usr/bin/env python
"""Worker entry point for worker nodes and containers.

    DAISY_CONTEXT=... python workers/worker.py --stage predict /data/configs/cluster.json

The scheduler (``python -m embedseg_daisy.run``) starts workers through its launcher
(local subprocess, ``docker run``, or ``srun``) and passes ``DAISY_CONTEXT``; a worker
connects back, processes blocks of its stage until none are left, records each block
in the store, and exits.
"""

import sys

from embedseg_daisy.pipeline.worker import main

if __name__ == "__main__":
    sys.exit(main())
