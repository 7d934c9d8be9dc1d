"""One split -> ``<out>/<dataset>/<split>.parquet`` in verl's columns, and the list of its bad rows.

Bad rows (``vgpo_verl.data.rows``) are not written: each one is listed with its id and reason in
`<split>.bad_rows.jsonl` next to the parquet and counted in the report. With ``fail_on_bad_rows`` a
split with a bad row gets its bad-rows list and no parquet (an earlier one is removed: no file is left
that a later run could take for the whole split). A split is written as `<split>.parquet.partial` and
renamed when complete: an interrupted run leaves the earlier parquet, if any, as it was, and at most a
`.partial` file (only if the process is killed outright), which no reader takes for a split.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from vgpo_verl.cli import UsageError
from vgpo_verl.data.datasets import DatasetSpec, render_prompt
from vgpo_verl.data.rows import BadRowError, Columns, ImageFiles, convert_row, row_id_of


@dataclasses.dataclass
class BadRow:
    id: str
    reason: str


def bad_rows_path(parquet_path: Path) -> Path:
    return parquet_path.with_suffix(".bad_rows.jsonl")


@dataclasses.dataclass
class ConversionReport:
    """written: the rows converted into the split's parquet; refused: the split had bad rows under
    fail_on_bad_rows, so no parquet was kept (those rows are not on disk)."""

    dataset: str
    split: str
    output: Path
    written: int = 0
    outside_subset: int = 0
    bad_rows: list[BadRow] = dataclasses.field(default_factory=list)
    refused: bool = False

    def summary(self) -> str:
        reasons: dict[str, int] = {}
        for bad in self.bad_rows:
            kind = bad.reason.split(":")[0]
            reasons[kind] = reasons.get(kind, 0) + 1
        if self.refused:
            text = (f"{self.dataset}/{self.split}: --fail-on-bad-rows: NO parquet written, {self.output} does not "
                    f"exist ({self.written} good rows left out)")
        else:
            text = f"{self.dataset}/{self.split}: wrote {self.written} rows to {self.output}"
        if self.outside_subset:
            text += f"; {self.outside_subset} rows outside the subset"
        if self.bad_rows:
            text += f"; {len(self.bad_rows)} bad rows NOT written ({reasons}), listed in {bad_rows_path(self.output)}"
        return text


OUTPUT_SCHEMA = pa.schema(
    [
        ("data_source", pa.string()),
        ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("images", pa.list_(pa.struct([("bytes", pa.binary()), ("min_pixels", pa.int64()), ("max_pixels", pa.int64())]))),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
        (
            "extra_info",
            pa.struct(
                [
                    ("split", pa.string()),
                    ("index", pa.int64()),
                    ("id", pa.string()),
                    ("question", pa.string()),
                    ("answer", pa.string()),
                    ("meta", pa.string()),
                ]
            ),
        ),
    ]
)


def convert(
    spec: DatasetSpec,
    rows: Iterable[dict],
    out_dir: str | Path,
    split: str,
    pixels: tuple[int, int] | None = None,
    image_root: str | Path | None = None,
    columns: Columns = Columns(),
    limit: int | None = None,
    batch_rows: int = 256,
    prompt: str | None = None,
    fail_on_bad_rows: bool = False,
) -> ConversionReport:
    """Write `<out_dir>/<spec.name>/<split>.parquet` (+ `.bad_rows.jsonl`); returns the counts.

    The file is named after the split, or what `spec.output_split` maps it to; `prompt` names the
    template (default: the dataset's). Both files are written as `<name>.partial` and renamed when
    complete: an exception midway leaves the earlier files as they were. fail_on_bad_rows: a split
    with a bad row gets its bad-rows list and no parquet (an earlier one is removed; report.refused).
    """
    pixels = pixels or spec.pixels
    if not 0 < pixels[0] <= pixels[1]:
        raise UsageError(f"pixel bounds {pixels[0]}..{pixels[1]} are not 0 < min <= max",
                         "give --min-pixels at most --max-pixels (the dataset's bounds: python -m vgpo_verl.data --help)")
    render_prompt(prompt or spec.prompt, "")  # an unknown template fails before any row is read
    written_split = spec.output_split.get(split, split)
    output = Path(out_dir).expanduser() / spec.name / f"{written_split}.parquet"
    created = [folder for folder in (output.parent, *output.parent.parents) if not folder.exists()]
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot create {output.parent} ({type(error).__name__}: {error.strerror or error})",
                         "pass an --out folder you can write to") from error
    try:
        return _write_split(spec, rows, output, written_split, pixels, image_root, columns, limit, batch_rows, prompt,
                            fail_on_bad_rows)
    finally:  # a split that failed before its first file leaves no empty folder behind
        for folder in created:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def _write_split(spec: DatasetSpec, rows: Iterable[dict], output: Path, written_split: str, pixels: tuple[int, int],
                 image_root: str | Path | None, columns: Columns, limit: int | None, batch_rows: int,
                 prompt: str | None, fail_on_bad_rows: bool) -> ConversionReport:
    report = ConversionReport(spec.name, written_split, output)
    images = ImageFiles(Path(image_root).expanduser() if image_root is not None else None)
    partial, bad_rows_partial = _partial(output), _partial(bad_rows_path(output))
    pending: list[dict] = []
    try:
        with pq.ParquetWriter(partial, OUTPUT_SCHEMA) as writer:
            for index, row in enumerate(rows):
                if limit is not None and index >= limit:
                    break
                if spec.subset is not None and not spec.subset(row):
                    report.outside_subset += 1
                    continue
                try:
                    pending.append(convert_row(spec, row, index, written_split, pixels, images, columns, prompt))
                except BadRowError as bad:
                    report.bad_rows.append(BadRow(row_id_of(spec, row, index, columns), str(bad)))
                if len(pending) >= batch_rows:
                    writer.write_table(pa.Table.from_pylist(pending, schema=OUTPUT_SCHEMA))
                    report.written += len(pending)
                    pending = []
            if pending:
                writer.write_table(pa.Table.from_pylist(pending, schema=OUTPUT_SCHEMA))
                report.written += len(pending)
        bad_rows_partial.write_text("".join(json.dumps(dataclasses.asdict(bad)) + "\n" for bad in report.bad_rows),
                                    encoding="utf-8")
        bad_rows_partial.replace(bad_rows_path(output))
        report.refused = fail_on_bad_rows and bool(report.bad_rows)
        if report.refused:
            output.unlink(missing_ok=True)  # an earlier parquet would pass for this conversion
        else:
            partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)
        bad_rows_partial.unlink(missing_ok=True)
    return report


def _partial(path: Path) -> Path:
    """Where `path` is written until complete: no reader takes `*.partial` for a split."""
    return path.with_name(path.name + ".partial")
