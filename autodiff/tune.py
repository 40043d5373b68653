"""Tune a program's matrix products ahead: `python -m autodiff.tune script.py [args...]`.

Runs the script as `python script.py args...` would, with `AUTODIFF_TUNE=2`: every tiled
product that its compiles meet and that has no stored result is searched on the device
and stored (`backends/tuning.py`), so later runs at the default level use the winners
without searching. Also:

    python -m autodiff.tune --show    the stored results (device, product, time, rule's time)
    python -m autodiff.tune --clear   forget them
"""
from __future__ import annotations

import json
import os
import runpy
import sys

from .backends import tuning


def show() -> None:
    devices = tuning.read_results()
    print(f"{tuning.tuning_path()}: {sum(len(e) for e in devices.values())} products")
    for device, entries in devices.items():
        print(device.split("\n")[2] if device.count("\n") >= 2 else device)
        for key, entry in sorted(entries.items()):
            shape = json.loads(key)
            tiling = entry.get("tiling", {})
            gain = entry.get("rule_seconds", 0) / max(entry.get("seconds", 1e-12), 1e-12)
            print(f"  {shape['batch']}x{shape['m']}x{shape['n']}x{shape['k']}"
                  f"{' A^T' if shape['a_transposed'] else ''}{' B^T' if shape['b_transposed'] else ''}: "
                  f"{tiling.get('strategy')} {tiling.get('rows')}x{tiling.get('cols')} "
                  f"float{tiling.get('vector_width')} {1e6 * entry.get('seconds', 0):.1f} us "
                  f"({gain:.2f}x the rule's speed)")


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] == "--show":
        show()
        return 0
    if argv[0] == "--clear":
        print(f"removed {tuning.tuning_path()}" if tuning.clear_results() else "nothing stored")
        return 0
    if not os.path.isfile(argv[0]):
        print(f"autodiff.tune: no script {argv[0]!r} (usage: python -m autodiff.tune script.py [args])",
              file=sys.stderr)
        return 2
    os.environ["AUTODIFF_TUNE"] = "2"
    sys.argv = list(argv)
    runpy.run_path(argv[0], run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
