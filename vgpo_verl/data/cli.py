"""The converter's command line: the paper's datasets to verl's RL parquet format.

    python -m vgpo_verl.data virl39k --input ~/hf/PAPO_ViRL39K_train --out ~/data/vgpo   # training set
    python -m vgpo_verl.data mmk12 --input ~/hf/PAPO_MMK12_test --out ~/data/vgpo        # validation set
    python -m vgpo_verl.data mathvista --hf-name AI4Math/MathVista --out ~/data/vgpo     # a benchmark
    python -m vgpo_verl.data --list

Input: ``--input`` a local file or folder (parquet, json/jsonl, a ``datasets.save_to_disk`` folder or
a hub snapshot; ``vgpo_verl.data.sources``), since training machines often have no hub access; or
``--hf-name`` to load from the hub with ``datasets``. ``--list`` names the datasets, their sources and
prompt templates (``vgpo_verl.data.datasets``). Output: ``<out>/<dataset>/<split>.parquet``,
one row per problem, in the columns verl's RLHFDataset reads:

    data_source   the dataset name (e.g. "virl39k")
    prompt        [{"role": "user", "content": <the prompt template applied to the question>}], one
                  `<image>` marker per image where the question has them, else all in front
    images        [{"bytes": original file bytes, "min_pixels": int, "max_pixels": int}]
                  (qwen_vl_utils.fetch_image, which verl calls, resizes within those pixel bounds)
    ability       "math"
    reward_model  {"style": "rule", "ground_truth": answer}   (passed to the grader unchanged)
    extra_info    {"split", "index", "id", "question", "answer", "meta"}  (meta: JSON of the
                  benchmark's own ids, e.g. WeMath's ID and key for its 4-dimensional score)

Rows without an image, without an answer, or with an image that does not decode are not written:
each one is listed with its id and reason in `<split>.bad_rows.jsonl` next to the parquet, counted
in the summary, and printed. With `--fail-on-bad-rows` a split with a bad row gets its bad-rows list
and no parquet, and the command exits with status 1. An interrupted run leaves the earlier parquet,
if any, as it was (``vgpo_verl.data.writer``).

Mistakes in the command (a flag, the --input path, a split or column that is not there) are one line
on stderr and exit status 2 (vgpo_verl.cli).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from vgpo_verl import cli
from vgpo_verl.cli import UsageError
from vgpo_verl.data.datasets import DATASETS, PROMPTS
from vgpo_verl.data.rows import Columns
from vgpo_verl.data.sources import read_hub, read_rows
from vgpo_verl.data.writer import bad_rows_path, convert

PROG = cli.prog("vgpo_verl.data", "vgpo-data")


def _parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(
        prog=PROG,
        description="Convert the VGPO paper's datasets to verl's RL parquet format.",
        epilog="Pixel bounds default to the spec: training sets 262144..4194304, evaluation benchmarks "
        "262144..1000000 (the paper's evaluation protocol).",
    )
    parser.add_argument("dataset", nargs="?", choices=sorted(DATASETS), help="dataset to convert")
    parser.add_argument("--list", action="store_true", help="list the datasets with their hub names and exit")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--input", help="local parquet/json(l) file, a folder of them, or a save_to_disk folder")
    source.add_argument("--hf-name", help="hub dataset to load with `datasets` (needs network access; without "
                        "--input and --hf-name the dataset's own hub name is loaded)")
    parser.add_argument("--hf-config", help="hub config name (default: the dataset's)")
    parser.add_argument("--split", action="append", help="split(s) to convert (repeatable; default: the dataset's)")
    parser.add_argument("--out", default="~/data/vgpo", help="output root (default ~/data/vgpo)")
    parser.add_argument("--image-root", help="folder relative image paths start from (default: --input's folder)")
    parser.add_argument("--min-pixels", type=cli.int_at_least(1), help="lower pixel bound stored with each image")
    parser.add_argument("--max-pixels", type=cli.int_at_least(1), help="upper pixel bound stored with each image")
    parser.add_argument("--prompt", choices=sorted(PROMPTS),
                        help="prompt template (default: math_format_perception for training sets, math for benchmarks)")
    parser.add_argument("--limit", type=cli.int_at_least(1), help="convert only the first N input rows (smoke tests)")
    parser.add_argument("--fail-on-bad-rows", action="store_true",
                        help="a split with any bad row gets no parquet (only its bad-rows list); exit status 1")
    for field in dataclasses.fields(Columns):
        parser.add_argument(f"--{field.name}-col", help=f"input column holding the {field.name}")
    return parser


@cli.command(PROG)
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list:
        for spec in DATASETS.values():
            subset = f", subset: {spec.subset_doc}" if spec.subset_doc else ""
            print(f"{spec.name:18s} hub={spec.hf_name or '-'} config={spec.hf_config or '-'} "
                  f"split={spec.default_split} prompt={spec.prompt}{subset}\n{'':18s} {spec.source_note}")
        return 0
    if args.dataset is None:
        raise UsageError("no dataset named", f"name one ({PROG} --list shows them)")
    spec = DATASETS[args.dataset]
    if not args.input and spec.hub_refusal:
        raise UsageError(f"{spec.name} needs --input", spec.hub_refusal)
    out = cli.output_folder("--out", args.out)
    pixels = (args.min_pixels or spec.pixels[0], args.max_pixels or spec.pixels[1])
    config = args.hf_config or spec.hf_config
    splits = args.split or [spec.default_split]
    # Every split's source is found before the first conversion: a missing split is reported at once.
    if args.input:
        sources = {split: read_rows(args.input, split, config=config) for split in splits}
    else:
        sources = {split: read_hub(args.hf_name or spec.hf_name, config, split) for split in splits}
    image_root = args.image_root
    if image_root is not None:
        cli.existing_path("--image-root", image_root, "pass the folder relative image paths start from", kind="folder")
    elif args.input:  # relative image paths are relative to the input's folder
        given = Path(args.input).expanduser()
        image_root = given if given.is_dir() else given.parent
    columns = Columns(**{f.name: getattr(args, f"{f.name}_col") for f in dataclasses.fields(Columns)})
    refused = False
    for split, rows in sources.items():
        report = convert(spec, rows, out, split, pixels, image_root, columns, args.limit, prompt=args.prompt,
                         fail_on_bad_rows=args.fail_on_bad_rows)
        print(report.summary())
        for bad in report.bad_rows[:20]:
            print(f"  bad row id={bad.id}: {bad.reason}", file=sys.stderr)
        if len(report.bad_rows) > 20:
            print(f"  ... {len(report.bad_rows) - 20} more in {bad_rows_path(report.output)}", file=sys.stderr)
        refused |= report.refused
    return 1 if refused else 0
