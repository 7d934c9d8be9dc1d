"""How our commands report a user's mistake: one line on stderr, exit status 2, no traceback.

A mistake is a flag, file or folder the user got wrong. argparse finds the flags' (``ArgumentParser``
below prints them as one line); the command finds the rest itself, before the long work starts, and
raises ``UsageError(what, what_to_do)``, which ``command`` prints as

    <prog>: error: <what>; <what to do>

Any other exception is a bug and keeps its traceback: never turn a broad exception (OSError,
KeyError) caught from deep inside into a UsageError; check the user's input where it comes in.
Library code may raise UsageError too where it reads something the user named (a benchmark file, a
split): it is a ValueError, so library callers that catch ValueError keep working.

A command is written like this (to convert one: use ``cli.ArgumentParser``, decorate ``main``, and
replace ``parser.error(...)`` and ``raise SystemExit("...")`` after parsing by ``raise UsageError``):

    import sys

    from vgpo_verl import cli

    PROG = "python -m vgpo_verl.demo"

    def build_parser() -> cli.ArgumentParser:
        parser = cli.ArgumentParser(prog=PROG, description="...")
        parser.add_argument("--steps", type=cli.int_at_least(1), default=2)  # argparse names the flag
        parser.add_argument("--model", help="a Hugging Face checkpoint folder")
        parser.add_argument("--out", default="runs", help="where the run goes")
        return parser

    @cli.command(PROG)
    def main(argv: list[str] | None = None) -> int:
        args = build_parser().parse_args(argv)
        model = cli.existing_path("--model", args.model, "pass a folder written by save_pretrained", kind="folder")
        out = cli.output_folder("--out", args.out)
        if args.steps > 100:
            raise cli.UsageError(f"--steps {args.steps} is more than the demo has data for", "use at most 100")
        ...  # the long work, with model and out
        return 0

    if __name__ == "__main__":
        sys.exit(main())

Tests check a command's mistakes in-process with ``tests/_cli_utils.py`` (``usage_error``).
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

USAGE_EXIT_CODE = 2  # argparse's, for every mistake of the user's


def prog(module: str, script: str) -> str:
    """How the running command calls itself in its usage and errors: `script` (a `vgpo-*` console script
    of setup.py) when the process was started as that script, else `python -m <module>`."""
    return script if pathlib.Path(sys.argv[0]).name == script else f"python -m {module}"


class UsageError(ValueError):
    """A mistake in what the user gave: `what` is wrong (naming the flag or file), `what_to_do` about it."""

    def __init__(self, what: str, what_to_do: str):
        super().__init__(what, what_to_do)
        self.what, self.what_to_do = what, what_to_do

    def __str__(self) -> str:
        return f"{self.what}; {self.what_to_do}"


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, but a flag mistake is one line `<prog>: error: <message>; see --help` (argparse
    prints its usage block first), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_EXIT_CODE, f"{self.prog}: error: {message}; see --help\n")


Main = TypeVar("Main", bound=Callable[..., int])


def command(prog: str) -> Callable[[Main], Main]:
    """Decorates a command's `main(argv) -> int`: a UsageError it raises becomes one line on stderr and
    SystemExit(2); every other exception propagates with its traceback."""

    def decorate(main: Main) -> Main:
        @functools.wraps(main)
        def run(*args, **kwargs) -> int:
            try:
                return main(*args, **kwargs)
            except UsageError as mistake:
                print(f"{prog}: error: {mistake}", file=sys.stderr, flush=True)
                raise SystemExit(USAGE_EXIT_CODE) from None

        return run  # type: ignore[return-value]

    return decorate


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse `type`: an integer >= low (argparse's error then names the flag and the value)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value

    return parse


def existing_path(flag: str, value: str | pathlib.Path, what_to_do: str, kind: str = "file") -> pathlib.Path:
    """`value` (with ~ expanded) when it exists as a `kind` ("file", "folder" or "any"); otherwise a
    UsageError naming the flag and the path."""
    path = pathlib.Path(value).expanduser()
    if not path.exists():
        raise UsageError(f"{flag} {value} does not exist", what_to_do)
    if kind == "file" and not path.is_file():
        raise UsageError(f"{flag} {value} is a folder, not a file", what_to_do)
    if kind == "folder" and not path.is_dir():
        raise UsageError(f"{flag} {value} is a file, not a folder", what_to_do)
    return path


def output_folder(flag: str, value: str | pathlib.Path) -> pathlib.Path:
    """`value` (with ~ expanded) when it is a folder or not there yet (the command creates it); a file
    there is a UsageError naming the flag."""
    path = pathlib.Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {value} is a file", "pass a folder (it is created if missing)")
    return path
