"""``scalelab`` as a runner on another machine would run it, for tests that cannot make that
machine: ``SCALELAB_TEST_CLOCK_SKEW_S`` sets its wall clock ahead (``time.time``; a kernel
has one wall clock for all its processes, so a skew between hosts can only be injected), and
``SCALELAB_TEST_STALE_S`` / ``SCALELAB_TEST_HEARTBEAT_S`` shorten the staleness window and the
heartbeat period to test time. Everything else is the real command:

    python tests/_runner.py run STUDY --out DIR ...
"""

import os
import sys
import time

skew = float(os.environ.get("SCALELAB_TEST_CLOCK_SKEW_S") or 0)
if skew:
    wall = time.time
    time.time = lambda: wall() + skew

from scalelab import store  # noqa: E402
from scalelab.runner import execute  # noqa: E402

for name in ("STALE_S", "HEARTBEAT_S"):
    value = os.environ.get(f"SCALELAB_TEST_{name}")
    if value:
        for module in (store, execute):
            if hasattr(module, name):  # (a module that imported the constant by name)
                setattr(module, name, float(value))

from scalelab.cli import main  # noqa: E402

sys.argv = ["scalelab", *sys.argv[1:]]
main()
