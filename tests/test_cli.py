"""vgpo_verl.cli: a user's mistake is one line `<prog>: error: <what>; <what to do>` and exit status 2;
any other exception keeps its traceback."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import textwrap

import pytest

from vgpo_verl import cli

from _cli_utils import usage_error

PROG = "python -m vgpo_verl.example"


def _parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(prog=PROG)
    parser.add_argument("--steps", type=cli.int_at_least(1), default=2)
    parser.add_argument("--model", required=True)
    parser.add_argument("--mode", choices=["fast", "slow"], default="fast")
    return parser


@cli.command(PROG)
def _main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    model = cli.existing_path("--model", args.model, "pass a checkpoint folder", kind="folder")
    if args.mode == "slow":
        raise FileNotFoundError(f"{model}/weights: a bug deep inside, not the user's mistake")
    return 0


@pytest.mark.parametrize("argv, flag, detail", [
    (["--steps", "0", "--model", "x"], "--steps", "expected an integer >= 1, got '0'"),
    (["--steps", "two", "--model", "x"], "--steps", "expected an integer >= 1, got 'two'"),
    (["--steps", "3"], "--model", "the following arguments are required"),
    (["--model", "x", "--mode", "quick"], "--mode", "invalid choice: 'quick'"),
    (["--model", "x", "--stpes", "3"], "--stpes", "unrecognized arguments"),
])
def test_flag_mistakes_are_one_line(capsys, argv, flag, detail):
    line = usage_error(capsys, _main, *argv)
    assert line.startswith(f"{PROG}: error: ") and line.endswith("; see --help")
    assert flag in line and detail in line


def test_usage_error_is_one_line_with_what_to_do(capsys, tmp_path):
    line = usage_error(capsys, _main, "--model", tmp_path / "missing")
    assert line == f"{PROG}: error: --model {tmp_path / 'missing'} does not exist; pass a checkpoint folder"
    (tmp_path / "file").write_text("")
    line = usage_error(capsys, _main, "--model", tmp_path / "file")
    assert line == f"{PROG}: error: --model {tmp_path / 'file'} is a file, not a folder; pass a checkpoint folder"


def test_other_exceptions_propagate(tmp_path):
    """A FileNotFoundError from inside the command is a bug: it is not turned into a usage error."""
    with pytest.raises(FileNotFoundError, match="a bug deep inside"):
        _main(["--model", str(tmp_path), "--mode", "slow"])
    assert _main(["--model", str(tmp_path)]) == 0


def test_usage_error_is_a_value_error():
    """Library callers that catch ValueError keep catching it; the message is `what; what to do`."""
    error = cli.UsageError("--data x.parquet has no column 'prompt'", "pass a verl-format parquet")
    assert isinstance(error, ValueError)
    assert str(error) == "--data x.parquet has no column 'prompt'; pass a verl-format parquet"


def test_output_folder(tmp_path):
    assert cli.output_folder("--out", tmp_path / "new") == tmp_path / "new"  # created later by the command
    (tmp_path / "file").write_text("")
    with pytest.raises(cli.UsageError, match=r"^--out .*file is a file; pass a folder"):
        cli.output_folder("--out", tmp_path / "file")


def test_a_bug_shows_its_traceback_from_the_real_entry():
    """In a process of its own, a command with a bug exits 1 with Python's traceback."""
    script = textwrap.dedent("""
        import sys
        from vgpo_verl import cli

        @cli.command("prog")
        def main(argv=None):
            raise RuntimeError("planted bug")

        sys.exit(main())
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr and "RuntimeError: planted bug" in proc.stderr


@pytest.mark.parametrize("script, argv, expected", [
    ("vgpo-data", [], "vgpo-data: error: no dataset named; name one (vgpo-data --list shows them)"),
    ("vgpo-evaluate", ["--out", "o"], "vgpo-evaluate: error: no --checkpoint or no --benchmark given"),
    ("vgpo-analyze", ["--out", "o"], "vgpo-analyze: error: no --checkpoint or no --data given"),
    ("vgpo-doctor", ["--tiny", "llava"], "vgpo-doctor: error: argument --tiny: invalid choice"),
])
def test_a_console_script_calls_itself_by_its_own_name(tmp_path, script, argv, expected):
    """`vgpo-data` is what the user typed: its errors and usage say so, not `python -m vgpo_verl.data`."""
    proc = subprocess.run([str(pathlib.Path(sys.executable).with_name(script)), *argv], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.startswith(expected), proc.stderr[-2000:]
