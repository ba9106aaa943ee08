"""Run one mode of plugins/module_utils/chain.py as a process (tests only: a relay that can be
killed): ``chain_mode.py MODE JSON_OPTIONS``; events as JSON lines on stdout."""

from __future__ import annotations

import json
import sys
import threading

from ansible_collections.lxcloud.cloud.plugins.module_utils import chain

LOCK = threading.Lock()


def emit(ev: dict) -> None:
    with LOCK:
        sys.stdout.write(json.dumps(ev) + "\n")
        sys.stdout.flush()


def main() -> int:
    if len(sys.argv) != 3 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        return 0 if len(sys.argv) == 2 else 2
    options = json.loads(sys.argv[2])
    verdict = chain.run(sys.argv[1], chain.Params(**options), chain.Reporter(emit))
    return 0 if verdict.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
