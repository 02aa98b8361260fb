"""pack_env_bench: how long ``python -m torchspark pack-env`` takes, by gzip level.

Workload: one virtualenv (``--prefix``, default the running one) packed by
``torchspark.pack_env.pack_env`` at gzip levels 1, 4 (the default, as
venv-pack's) and 6 (gzip's usual), interleaved round by round, each into a
fresh file. Prints seconds (median over rounds, min in brackets), the
archive's size, and time and size as ratios to level 4 measured in the same
run. The baseline a user would otherwise run is venv-pack itself, which
``pack_env`` calls (plus one ``import torchspark`` check in the environment's
Python, about 2 s, timed in every case).

    python benchmarks/pack_env_bench.py --prefix /path/to/venv --rounds 2
"""

from __future__ import annotations

import os
import sys
import tempfile

import _bench

from torchspark.pack_env import pack_env

LEVELS = (1, 4, 6)


def main() -> None:
    p = _bench.parser(__doc__, default_rounds=2, quick_rounds=1)
    p.add_argument("--prefix", default=None, help="the virtualenv to pack (default: this one)")
    args = _bench.finish_args(p.parse_args())
    _bench.header("pack_env_bench: pack-env by gzip level", args)
    sizes: dict[int, int] = {}
    with tempfile.TemporaryDirectory() as tmp:

        def case(level: int) -> _bench.Case:
            def run() -> None:
                out = os.path.join(tmp, f"env-{level}.tar.gz")
                packed = pack_env(out, prefix=args.prefix, compress_level=level, force=True)
                sizes[level] = packed.size
                os.remove(out)

            return _bench.Case(f"level {level}", run)

        cases = _bench.run_interleaved(
            [case(level) for level in LEVELS], args.rounds, min_round_s=0.0, warmup=0
        )
    prefix = os.path.realpath(args.prefix or sys.prefix)
    print(f"## {prefix}: pack-env (pyspark left out), one archive per round\n")
    base = cases[LEVELS.index(4)]
    rows = [
        [
            c.name,
            _bench.tm(c),
            f"{sizes[level] / 1e6:.0f} MB",
            _bench.ratio(c.median / base.median),
            _bench.ratio(sizes[level] / sizes[4]),
        ]
        for level, c in zip(LEVELS, cases, strict=True)
    ]
    print(_bench.table(["gzip", "time", "archive", "time vs 4", "size vs 4"], rows))
    _bench.footer()


if __name__ == "__main__":
    main()
