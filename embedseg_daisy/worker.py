"""``python -m embedseg_daisy.worker --stage NAME CONFIG``: one worker of a stage.

Started by the scheduler's launchers (local subprocess, ``docker run``, ``srun``)
with ``DAISY_CONTEXT`` in the environment.
"""

import sys

from .pipeline.worker import main

if __name__ == "__main__":
    sys.exit(main())
