"""`python -m vgpo_verl.report RUN [--out PAGE.png]`: one PNG page of a run (see vgpo_verl.report).

A RUN that is missing, not a log of verl's (a foreign file) or holds no step is one line on stderr
and exit status 2 (vgpo_verl.cli).
"""

from __future__ import annotations

import pathlib
import sys

from vgpo_verl import cli
from vgpo_verl.report import PAGE_NAME, report

PROG = "python -m vgpo_verl.report"


def build_parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("run", type=pathlib.Path, metavar="RUN",
                   help="verl's file-logger jsonl (the demo's metrics.jsonl), a W&B offline run folder "
                        "(wandb/offline-run-*), or a demo run folder")
    p.add_argument("--out", type=pathlib.Path, default=None,
                   help=f"the PNG to write (default: {PAGE_NAME} next to the log it read)")
    return p


@cli.command(PROG)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print(report(args.run, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
