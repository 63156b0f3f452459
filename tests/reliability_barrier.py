"""Run one CLI verb after a wall-clock barrier, so concurrent processes truly overlap.

    python tests/reliability_barrier.py START_EPOCH TIMES_FILE TOOL ARGS...

Imports the tool (what `processorctl`/`localctl`/… do at start-up), sleeps until START_EPOCH, then
runs exactly what the entry point runs (`framework.run_tool(parser, argv)`). One JSON line
`{"ready", "start", "end", "code"}` (epoch seconds) is appended to TIMES_FILE so the caller can prove
the runs overlapped (and that none arrived after the barrier).
"""

from __future__ import annotations

import importlib
import json
import sys
import time

TOOLS = {
    "processorctl": "theory_deploy.cli.processorctl",
    "localctl": "theory_deploy.cli.localctl",
    "modalctl": "theory_deploy.cli.modalctl",
}


def main() -> None:
    start_at, times_file, tool, *argv = sys.argv[1:]
    from theory_deploy.cli import framework

    parser = importlib.import_module(TOOLS[tool]).parser()
    ready = time.time()
    time.sleep(max(0.0, float(start_at) - ready))
    start = time.time()
    code = 1
    try:
        code = framework.run_tool(parser, argv)
    finally:
        with open(times_file, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"ready": ready, "start": start, "end": time.time(), "code": code}) + "\n")
    sys.exit(code)


if __name__ == "__main__":
    main()
