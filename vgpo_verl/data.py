"""Training and evaluation data of the VGPO paper, converted to verl's RL parquet format.

    python -m vgpo_verl.data virl39k --input ~/hf/ViRL39K --out ~/data/vgpo            # train split
    python -m vgpo_verl.data mmk12 --input ~/hf/MMK12 --split test --out ~/data/vgpo
    python -m vgpo_verl.data mathvista --hf-name AI4Math/MathVista --split testmini --out ~/data/vgpo
    python -m vgpo_verl.data --list

Input: a local directory or file (parquet, json/jsonl, or a `datasets.save_to_disk` folder; a hub
snapshot with data/*.parquet works too), since training machines often have no hub access; or
`--hf-name` to load from the hub with `datasets`. Output: `<out>/<dataset>/<split>.parquet`, one row per
problem, in the columns verl's RLHFDataset reads:

    data_source   the dataset name (e.g. "virl39k")
    prompt        [{"role": "user", "content": "<image>question ... INSTRUCTION"}], one `<image>` per image
    images        [{"bytes": original file bytes, "min_pixels": int, "max_pixels": int}]
                  (qwen_vl_utils.fetch_image, which verl calls, resizes within those pixel bounds)
    ability       "math"
    reward_model  {"style": "rule", "ground_truth": answer}   (a `\\boxed{x}` answer is stored as x)
    extra_info    {"split", "index", "id", "question", "answer", "choices"}  (choices: lettered A, B, ...)

Rows without an image, without an answer, or with an image that does not decode are not written:
each one is listed with its id and reason in `<split>.bad_rows.jsonl` next to the parquet, counted
in the summary, and printed (`--fail-on-bad-rows` turns them into an error).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import io
import json
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from vgpo_verl.reward import extract_boxed

# The published prompt: reason inside <think></think>, then the final answer in \boxed{} (the wording
# of the authors' math format prompt).
INSTRUCTION = (
    "You FIRST think about the reasoning process as an internal monologue and then provide the final answer. "
    "The reasoning process MUST BE enclosed within <think> </think> tags. "
    "The final answer MUST BE put in \\boxed{}."
)

# Spec: training images between 262,144 and 4,194,304 pixels; the evaluation protocol 262,144..1,000,000.
TRAIN_PIXELS = (262_144, 4_194_304)
EVAL_PIXELS = (262_144, 1_000_000)

IMAGE_MARKER = "<image>"
QUESTION_IN_IMAGE = "Answer the question shown in the image."
_NUMBERED_MARKER = re.compile(r"<image[ _]?(\d+)>")
_LETTERED_OPTIONS = re.compile(r"(?:^|[;\n])\s*\(?([A-H])[.:)：]\s*")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset lives and which of its columns hold what (first name present wins)."""

    name: str
    hf_name: str | None
    default_split: str
    pixels: tuple[int, int]
    id_cols: tuple[str, ...] = ("id", "qid", "pid", "ID", "sample_index", "index")
    question_cols: tuple[str, ...] = ("question", "problem", "query")
    answer_cols: tuple[str, ...] = ("answer", "solution", "label")
    image_cols: tuple[str, ...] = ("images", "image", "decoded_image", "image_path")
    choices_cols: tuple[str, ...] = ("choices", "options", "option")
    # Columns that are ALL images of one row, in order (MMMU's image_1..image_7); used when present.
    all_image_cols: tuple[str, ...] = ()
    hf_config: str | None = None
    # Benchmarks whose question may be printed in the image only (MathVerse's vision-only version,
    # MMMU-Pro's vision setting): an empty question becomes QUESTION_IN_IMAGE instead of a bad row.
    question_may_be_in_image: bool = False
    # Benchmark subsets (rows outside are counted as `outside_subset`, not as bad rows).
    subset: Callable[[dict], bool] | None = None
    subset_doc: str = ""


def _mathverse_vision_only(row: dict) -> bool:
    return str(row.get("problem_version", "")).strip().lower() == "vision only"


# Hub names as published; `--hf-name` overrides, `--input` needs none.
DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        DatasetSpec("virl39k", "TIGER-Lab/ViRL39K", "train", TRAIN_PIXELS),
        DatasetSpec("mmk12", "FanqingM/MMK12", "train", TRAIN_PIXELS),
        DatasetSpec("geo3k", "hiyouga/geometry3k", "train", TRAIN_PIXELS),
        DatasetSpec("mathvista", "AI4Math/MathVista", "testmini", EVAL_PIXELS, question_cols=("question", "query")),
        DatasetSpec(
            "mathverse", "AI4Math/MathVerse", "testmini", EVAL_PIXELS, hf_config="testmini",
            question_may_be_in_image=True,
        ),
        DatasetSpec(
            "mathverse_vision", "AI4Math/MathVerse", "testmini", EVAL_PIXELS, hf_config="testmini",
            question_may_be_in_image=True,
            subset=_mathverse_vision_only, subset_doc="problem_version == 'Vision Only'",
        ),
        DatasetSpec("wemath", "We-Math/We-Math", "testmini", EVAL_PIXELS),
        DatasetSpec("logicvista", "lscpku/LogicVista", "test", EVAL_PIXELS),
        DatasetSpec("superclevr", None, "test", EVAL_PIXELS),
        DatasetSpec(
            "mmmu_pro", "MMMU/MMMU_Pro", "test", EVAL_PIXELS, hf_config="standard (10 options)",
            all_image_cols=tuple(f"image_{i}" for i in range(1, 8)), question_may_be_in_image=True,
        ),
    ]
}


@dataclasses.dataclass
class BadRow:
    id: str
    reason: str


@dataclasses.dataclass
class ConversionReport:
    dataset: str
    split: str
    output: Path
    written: int = 0
    outside_subset: int = 0
    bad_rows: list[BadRow] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        reasons: dict[str, int] = {}
        for bad in self.bad_rows:
            kind = bad.reason.split(":")[0]
            reasons[kind] = reasons.get(kind, 0) + 1
        text = f"{self.dataset}/{self.split}: wrote {self.written} rows to {self.output}"
        if self.outside_subset:
            text += f"; {self.outside_subset} rows outside the subset"
        if self.bad_rows:
            text += f"; {len(self.bad_rows)} bad rows NOT written ({reasons}), listed in {bad_rows_path(self.output)}"
        return text


class BadRowError(ValueError):
    """A row that cannot become a training example; the message says why."""


def bad_rows_path(parquet_path: Path) -> Path:
    return parquet_path.with_suffix(".bad_rows.jsonl")


# ---------------------------------------------------------------------------------------------
# Reading the input.


def read_rows(source: str | Path, split: str, batch_size: int = 256) -> Iterator[dict]:
    """Rows of `split` from a local file or directory, images left undecoded (raw bytes / paths)."""
    source = Path(source).expanduser()
    if not source.exists():
        raise FileNotFoundError(f"--input {source} does not exist")
    if source.is_dir() and ((source / "dataset_info.json").exists() or (source / "dataset_dict.json").exists()):
        yield from _read_saved_dataset(source, split, batch_size)
        return
    files = [source] if source.is_file() else _split_files(source, split)
    for path in files:
        if path.suffix == ".parquet":
            for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
                yield from batch.to_pylist()
        elif path.suffix in (".json", ".jsonl"):
            yield from _read_json(path)
        else:
            raise ValueError(f"{path}: unsupported input file (parquet, json, jsonl or a save_to_disk folder)")


def _split_files(directory: Path, split: str) -> list[Path]:
    candidates = sorted(
        p for p in directory.rglob("*") if p.is_file() and p.suffix in (".parquet", ".json", ".jsonl")
    )
    # Hub snapshots name files `<split>-00000-of-00001.parquet` or `<split>.parquet`, or put them in `<split>/`.
    matching = [p for p in candidates if re.search(rf"(^|[/_.-]){re.escape(split)}([/_.-]|$)", str(p.relative_to(directory)))]
    if matching:
        return matching
    if len(candidates) == 1:
        return candidates
    raise FileNotFoundError(
        f"no file for split {split!r} under {directory} (found: {[str(p.relative_to(directory)) for p in candidates][:10]})"
    )


def _read_json(path: Path) -> Iterator[dict]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        for line in text.splitlines():
            if line.strip():
                yield json.loads(line)
    else:
        data = json.loads(text)
        yield from (data if isinstance(data, list) else data["data"])


def _read_saved_dataset(directory: Path, split: str, batch_size: int) -> Iterator[dict]:
    import datasets

    loaded = datasets.load_from_disk(str(directory))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise KeyError(f"{directory}: no split {split!r}; splits: {list(loaded)}")
        loaded = loaded[split]
    yield from _undecoded_rows(loaded, batch_size)


def _undecoded_rows(dataset, batch_size: int) -> Iterator[dict]:
    """Rows of a `datasets.Dataset` in arrow form: images stay {"bytes", "path"} structs (original
    bytes, no decode), and any row selection the dataset carries (an indices mapping) is honoured."""
    for batch in dataset.with_format("arrow").iter(batch_size=batch_size):
        yield from batch.to_pylist()


def read_hub(hf_name: str, hf_config: str | None, split: str, batch_size: int = 256) -> Iterator[dict]:
    """Rows from the hub (needs network access); images undecoded like the local path."""
    import datasets

    yield from _undecoded_rows(datasets.load_dataset(hf_name, hf_config, split=split), batch_size)


# ---------------------------------------------------------------------------------------------
# One row -> one verl example.


def _first(row: dict, columns: tuple[str, ...], override: str | None = None) -> tuple[str | None, Any]:
    if override:
        if override not in row:
            raise KeyError(f"column {override!r} not in the input (columns: {sorted(row)})")
        return override, row[override]
    for column in columns:
        if column in row and row[column] is not None:
            return column, row[column]
    return None, None


def _image_bytes(value: Any, image_root: Path | None, row_id: str) -> list[bytes]:
    """Raw bytes of every image in a cell: HF image struct, bytes, path, PIL image, or a list of these."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [b for item in value for b in _image_bytes(item, image_root, row_id)]
    if hasattr(value, "tolist") and not isinstance(value, (bytes, str)):  # numpy array from pandas
        return _image_bytes(value.tolist(), image_root, row_id)
    if isinstance(value, dict):
        if value.get("bytes"):
            return [bytes(value["bytes"])]
        if value.get("path"):
            return _image_bytes(value["path"], image_root, row_id)
        return []
    if isinstance(value, (bytes, bytearray)):
        return [bytes(value)]
    if isinstance(value, Image.Image):
        buffer = io.BytesIO()  # decoded already: the original bytes are gone, PNG loses nothing
        value.save(buffer, format="PNG")
        return [buffer.getvalue()]
    if isinstance(value, str):
        path = Path(value).expanduser()
        if not path.is_absolute() and image_root is not None:
            path = image_root / path
        if not path.is_file():
            raise BadRowError(f"unreadable image: file {value!r} not found (image root {image_root})")
        return [path.read_bytes()]
    raise BadRowError(f"unreadable image: unsupported cell type {type(value).__name__}")


def _row_images(spec: DatasetSpec, row: dict, row_id: str, image_root: Path | None, columns: Columns) -> list[bytes]:
    """Raw bytes of the row's images. One column holds them, except MMMU's image_1..image_7. Of several
    candidate columns (MathVista's `image` path and `decoded_image` bytes: the same picture), the first
    that yields images wins; when none does, the first column's error is the row's reason."""
    spread = [row[c] for c in spec.all_image_cols if row.get(c) is not None]
    if spread and not columns.image:
        return [b for cell in spread for b in _image_bytes(cell, image_root, row_id)]
    candidates = [columns.image] if columns.image else [c for c in spec.image_cols if row.get(c) is not None]
    first_error = None
    for column in candidates:
        try:
            images = _image_bytes(row.get(column), image_root, row_id)
        except BadRowError as error:
            first_error = first_error or error
            continue
        if images:
            return images
    raise first_error or BadRowError("no image")


def _check_decodes(data: bytes, position: int) -> None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decodes every pixel: truncated files fail here, not in the middle of training
            if image.width < 1 or image.height < 1:
                raise ValueError("empty image")
    except Exception as error:  # PIL raises many types; each means this image cannot be used
        raise BadRowError(f"unreadable image: image {position} does not decode ({type(error).__name__}: {error})")


def parse_choices(value: Any) -> list[str]:
    """Choices as a list of texts: a list, a string repr of a list, or `A. x; B. y` text."""
    if value is None:
        return []
    if hasattr(value, "tolist") and not isinstance(value, str):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value]
    text = str(value).strip()
    if not text:
        return []
    if text.startswith("["):
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            parsed = None
        if isinstance(parsed, list):
            return [str(v).strip() for v in parsed]
    parts = _LETTERED_OPTIONS.split(text)
    if len(parts) >= 3:  # ['', 'A', 'x', 'B', 'y', ...]
        return [parts[i + 1].strip().rstrip(";").strip() for i in range(1, len(parts) - 1, 2)]
    raise BadRowError(f"bad choices: cannot read {text[:80]!r}")


def _ground_truth(answer: Any, choices: list[str]) -> str:
    text = "" if answer is None else str(answer).strip()
    boxed = extract_boxed(text)
    if boxed is not None:
        text = boxed
    if not text:
        raise BadRowError("no answer: empty answer")
    if choices and text in choices and not re.fullmatch(r"\(?[A-H]\)?", text):
        text = chr(ord("A") + choices.index(text))  # the letter of the right choice text
    return text


def _prompt_text(question: str, n_images: int, choices: list[str]) -> str:
    """`<image>` markers (one per image, in image order) + question + lettered choices + instruction."""
    numbered = [int(n) for n in _NUMBERED_MARKER.findall(question)]
    if numbered:
        question = _NUMBERED_MARKER.sub(IMAGE_MARKER, question)
    markers = question.count(IMAGE_MARKER)
    if markers == 0:
        question = IMAGE_MARKER * n_images + question
    elif markers != n_images:
        raise BadRowError(f"unreadable image: the question has {markers} <image> markers for {n_images} images")
    text = question.strip()
    if choices:
        text += "\nChoices:\n" + "\n".join(f"({chr(ord('A') + i)}) {c}" for i, c in enumerate(choices))
    return f"{text} {INSTRUCTION}"


def _ordered_images(question: str, images: list[bytes]) -> list[bytes]:
    """MMMU-style `<image 2> ... <image 1>`: images in the order their markers appear."""
    numbered = [int(n) for n in _NUMBERED_MARKER.findall(question)]
    if not numbered:
        return images
    if max(numbered) > len(images):
        raise BadRowError(f"no image: the question refers to <image {max(numbered)}> but the row has {len(images)}")
    return [images[n - 1] for n in numbered]


@dataclasses.dataclass(frozen=True)
class Columns:
    """Command-line column overrides (None: the spec's candidates)."""

    id: str | None = None
    question: str | None = None
    answer: str | None = None
    image: str | None = None
    choices: str | None = None


def convert_row(
    spec: DatasetSpec,
    row: dict,
    index: int,
    split: str,
    pixels: tuple[int, int],
    image_root: Path | None = None,
    columns: Columns = Columns(),
) -> dict:
    """One input row -> one verl row. Raises BadRowError (message = reason) for unusable rows."""
    _, row_id = _first(row, spec.id_cols, columns.id)
    row_id = str(index if row_id is None else row_id)
    _, question = _first(row, spec.question_cols, columns.question)
    question = "" if question is None else str(question)
    if not question.strip():
        if not spec.question_may_be_in_image:
            raise BadRowError("no question")
        question = QUESTION_IN_IMAGE
    _, choices_cell = _first(row, spec.choices_cols, columns.choices)
    choices = parse_choices(choices_cell)
    _, answer = _first(row, spec.answer_cols, columns.answer)
    ground_truth = _ground_truth(answer, choices)

    images = _row_images(spec, row, row_id, image_root, columns)
    for position, data in enumerate(images):
        _check_decodes(data, position)
    images = _ordered_images(question, images)

    min_pixels, max_pixels = pixels
    return {
        "data_source": spec.name,
        "prompt": [{"role": "user", "content": _prompt_text(question, len(images), choices)}],
        "images": [{"bytes": data, "min_pixels": min_pixels, "max_pixels": max_pixels} for data in images],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": ground_truth},
        "extra_info": {
            "split": split,
            "index": index,
            "id": row_id,
            "question": question,
            "answer": "" if answer is None else str(answer),
            "choices": choices,
        },
    }


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
                    ("choices", pa.list_(pa.string())),
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
) -> ConversionReport:
    """Write `<out_dir>/<spec.name>/<split>.parquet` (+ `.bad_rows.jsonl`); returns the counts."""
    pixels = pixels or spec.pixels
    if not 0 < pixels[0] <= pixels[1]:
        raise ValueError(f"pixel bounds must satisfy 0 < min_pixels <= max_pixels, got {pixels}")
    output = Path(out_dir).expanduser() / spec.name / f"{split}.parquet"
    output.parent.mkdir(parents=True, exist_ok=True)
    report = ConversionReport(spec.name, split, output)
    root = Path(image_root).expanduser() if image_root is not None else None
    pending: list[dict] = []
    with pq.ParquetWriter(output, OUTPUT_SCHEMA) as writer:
        for index, row in enumerate(rows):
            if limit is not None and index >= limit:
                break
            if spec.subset is not None and not spec.subset(row):
                report.outside_subset += 1
                continue
            try:
                pending.append(convert_row(spec, row, index, split, pixels, root, columns))
            except BadRowError as bad:
                _, row_id = _first(row, spec.id_cols, columns.id)
                report.bad_rows.append(BadRow(str(index if row_id is None else row_id), str(bad)))
            if len(pending) >= batch_rows:
                writer.write_table(pa.Table.from_pylist(pending, schema=OUTPUT_SCHEMA))
                report.written += len(pending)
                pending = []
        if pending:
            writer.write_table(pa.Table.from_pylist(pending, schema=OUTPUT_SCHEMA))
            report.written += len(pending)
    with open(bad_rows_path(output), "w", encoding="utf-8") as f:
        for bad in report.bad_rows:
            f.write(json.dumps(dataclasses.asdict(bad)) + "\n")
    return report


# ---------------------------------------------------------------------------------------------
# Command line.


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vgpo_verl.data",
        description="Convert the VGPO paper's datasets to verl's RL parquet format.",
        epilog="Pixel bounds default to the spec: training sets 262144..4194304, evaluation benchmarks "
        "262144..1000000 (the paper's evaluation protocol).",
    )
    parser.add_argument("dataset", nargs="?", choices=sorted(DATASETS), help="dataset to convert")
    parser.add_argument("--list", action="store_true", help="list the datasets with their hub names and exit")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--input", help="local parquet/json(l) file, a folder of them, or a save_to_disk folder")
    source.add_argument("--hf-name", help="load from the hub with `datasets` (needs network access)")
    parser.add_argument("--hf-config", help="hub config name (default: the dataset's)")
    parser.add_argument("--split", action="append", help="split(s) to convert (repeatable; default: the dataset's)")
    parser.add_argument("--out", required=False, default="~/data/vgpo", help="output root (default ~/data/vgpo)")
    parser.add_argument("--image-root", help="folder relative image paths start from (default: --input's folder)")
    parser.add_argument("--min-pixels", type=int, help="lower pixel bound stored with each image")
    parser.add_argument("--max-pixels", type=int, help="upper pixel bound stored with each image")
    parser.add_argument("--limit", type=int, help="convert only the first N input rows (smoke tests)")
    parser.add_argument("--fail-on-bad-rows", action="store_true", help="exit with status 1 if any row is bad")
    for field in dataclasses.fields(Columns):
        parser.add_argument(f"--{field.name}-col", help=f"input column holding the {field.name}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list:
        for spec in DATASETS.values():
            subset = f", subset: {spec.subset_doc}" if spec.subset_doc else ""
            print(f"{spec.name:18s} hub={spec.hf_name or '-'} config={spec.hf_config or '-'} split={spec.default_split}{subset}")
        return 0
    if args.dataset is None:
        _parser().error("name a dataset (or --list)")
    spec = DATASETS[args.dataset]
    if not args.input and not args.hf_name:
        _parser().error(f"give --input (a local copy) or --hf-name (e.g. {spec.hf_name or 'owner/name'})")
    pixels = spec.pixels
    if args.min_pixels or args.max_pixels:
        pixels = (args.min_pixels or spec.pixels[0], args.max_pixels or spec.pixels[1])
    columns = Columns(**{f.name: getattr(args, f"{f.name}_col") for f in dataclasses.fields(Columns)})
    image_root = args.image_root
    if image_root is None and args.input:  # relative image paths are relative to the input's folder
        given = Path(args.input).expanduser()
        image_root = given if given.is_dir() else given.parent
    any_bad = False
    for split in args.split or [spec.default_split]:
        if args.input:
            rows = read_rows(args.input, split)
        else:
            rows = read_hub(args.hf_name, args.hf_config or spec.hf_config, split)
        report = convert(spec, rows, args.out, split, pixels, image_root, columns, args.limit)
        print(report.summary())
        for bad in report.bad_rows[:20]:
            print(f"  bad row id={bad.id}: {bad.reason}", file=sys.stderr)
        if len(report.bad_rows) > 20:
            print(f"  ... {len(report.bad_rows) - 20} more in {bad_rows_path(report.output)}", file=sys.stderr)
        any_bad |= bool(report.bad_rows)
    return 1 if any_bad and args.fail_on_bad_rows else 0


if __name__ == "__main__":
    sys.exit(main())
