"""The docs' knob tables, generated from the config dataclasses (vgpo_verl.methods.knobs.CONFIG_CLASSES).

One table per dataclass (VGPOConfig, EntropyShapingConfig, VPPOConfig), never written by hand:

    python -m vgpo_verl.knobs --markdown             # the three tables
    python -m vgpo_verl.knobs --update docs/methods.md   # rewrite the tables between their markers

A table in a document sits between `<!-- knobs:<key> -->` and `<!-- /knobs:<key> -->`;
tests/test_docs.py fails when a document's table and its dataclass disagree.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path

from vgpo_verl.methods.knobs import CONFIG_CLASSES, config_class


def markdown_table(key: str) -> str:
    """The knob table of `algorithm.<key>`: key, default, help, one row per dataclass field."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(config_class(key)):
        help_text = f.metadata.get("help", "").replace("|", "\\|")
        rows.append(f"| `{f.name}` | `{f.default!r}` | {help_text} |")
    return "\n".join(rows)


def _block(key: str) -> re.Pattern:
    return re.compile(rf"(<!-- knobs:{key} -->\n)(.*?)(\n<!-- /knobs:{key} -->)", re.S)


def tables_in(text: str) -> dict[str, str]:
    """key -> the table a document holds between that key's markers."""
    return {key: m.group(2) for key in CONFIG_CLASSES for m in [_block(key).search(text)] if m}


def update(text: str) -> str:
    """The document with every marked table regenerated."""
    for key in tables_in(text):
        text = _block(key).sub(lambda m, key=key: m.group(1) + markdown_table(key) + m.group(3), text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vgpo_verl.knobs", description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print every knob table (markdown)")
    parser.add_argument("--update", type=Path, metavar="FILE",
                        help="rewrite the tables between <!-- knobs:KEY --> markers in FILE")
    args = parser.parse_args(argv)
    if args.update is not None:
        if not args.update.is_file():
            parser.error(f"--update {args.update}: no such file")
        text = args.update.read_text()
        if not tables_in(text):
            parser.error(f"--update {args.update}: no <!-- knobs:KEY --> marker in it (keys: {sorted(CONFIG_CLASSES)})")
        args.update.write_text(update(text))
        return 0
    if not args.markdown:
        parser.error("give --markdown or --update FILE")
    for key in CONFIG_CLASSES:
        print(f"`algorithm.{key}.*` ({config_class(key).__name__})\n\n{markdown_table(key)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
