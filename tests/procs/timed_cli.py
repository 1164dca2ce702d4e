"""``python -m peernet ARGS``, timed from inside the process.

    python -m tests.procs.timed_cli ARGS...

Runs the command line exactly as ``python -m peernet`` does, then writes one JSON line
to stderr: ``{"up": T0, "imported": T1, "done": T2}``, times on the system-wide
monotonic clock (``time.monotonic()``, comparable with the parent's): T0 when this
interpreter ran its first line, T1 once the CLI was imported, T2 when the command had
printed its result and returned. So a test can tell Python's own start-up and the
imports apart from what the command did.
"""

import time

up = time.monotonic()

import json  # noqa: E402 -- after the first timestamp on purpose
import sys  # noqa: E402

from peernet.cli import main  # noqa: E402

imported = time.monotonic()
code = main()
print(json.dumps({"up": up, "imported": imported, "done": time.monotonic()}),
      file=sys.stderr, flush=True)
sys.exit(code)
