"""``python -m torchspark COMMAND [ARGS]``: the command-line tools.

Each command is a module with a ``main(argv) -> int`` function, imported only
when it runs; adding one is one line in ``COMMANDS``.

    python -m torchspark pack-env -o env.tar.gz
    python -m torchspark doctor --model model.pt --input x:float32[16] --master yarn
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# command -> (module with main(argv), one line of help)
COMMANDS: dict[str, tuple[str, str]] = {
    "doctor": (
        "torchspark.spark.doctor",
        "measure a model and recommend the Spark settings to score with it, and why",
    ),
    "pack-env": (
        "torchspark.pack_env",
        "pack this virtualenv for spark.archives and print the Spark flags that ship it",
    ),
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: python -m torchspark COMMAND [ARGS]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in sorted(COMMANDS.items())]
    lines += ["", "python -m torchspark COMMAND --help: the command's arguments"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] not in COMMANDS:
        print(f"torchspark: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
