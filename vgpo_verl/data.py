"""Training and evaluation data of the VGPO paper, converted to verl's RL parquet format.

    python -m vgpo_verl.data virl39k --input ~/hf/PAPO_ViRL39K_train --out ~/data/vgpo   # training set
    python -m vgpo_verl.data mmk12 --input ~/hf/PAPO_MMK12_test --out ~/data/vgpo        # validation set
    python -m vgpo_verl.data mathvista --hf-name AI4Math/MathVista --out ~/data/vgpo     # a benchmark
    python -m vgpo_verl.data --list

Sources. Training and validation are the VGPO authors' (their ``train_vgpo_7B.sh``, github
wzb-bupt/VGPO): ``PAPOGalaxy/PAPO_ViRL39K_train`` (38,870 rows) and ``PAPOGalaxy/PAPO_MMK12_test``
(2,000 rows; its one split is called ``train``, which is what their EasyR1 loader reads, and is
written here as ``mmk12/test.parquet``). The original releases stay available as ``virl39k_tiger``
(TIGER-Lab/ViRL39K: image paths into ``images.zip``, read from the zip or an unzipped folder) and
``mmk12_fanqingm`` (FanqingM/MMK12, split ``test``). Benchmarks take their question, answer and image
from the fields Look-Back's ``eval/utils/data_loaders.py`` (github PKU-YuanGroup/Look-Back) reads, or
from the dataset card where Look-Back has no loader; each spec below says which.

Input: a local directory or file (parquet, json/jsonl, or a ``datasets.save_to_disk`` folder; a hub
snapshot works: exactly one source is picked for the split, see ``split_files``), since training
machines often have no hub access; or ``--hf-name`` to load from the hub with ``datasets``. Output:
``<out>/<dataset>/<split>.parquet``, one row per problem, in the columns verl's RLHFDataset reads:

    data_source   the dataset name (e.g. "virl39k")
    prompt        [{"role": "user", "content": <the prompt template applied to the question>}], one
                  `<image>` marker per image where the question has them, else all in front
    images        [{"bytes": original file bytes, "min_pixels": int, "max_pixels": int}]
                  (qwen_vl_utils.fetch_image, which verl calls, resizes within those pixel bounds)
    ability       "math"
    reward_model  {"style": "rule", "ground_truth": answer}   (passed to the grader unchanged)
    extra_info    {"split", "index", "id", "question", "answer", "meta"}  (meta: JSON of the
                  benchmark's own ids, e.g. WeMath's ID and key for its 4-dimensional score)

Prompt templates (``--prompt``; each dataset has its default):
    math_format_perception  the VGPO authors' training template
                            (examples/format_prompt/math_format_perception.jinja): the trimmed question,
                            a blank line, then the <think>/\\boxed{} instruction. Training sets.
    math                    the trimmed question, a space, then the upper-case instruction of their
                            examples/format_prompt/math.jinja, which is also the default
                            ``--system-prompt`` Look-Back's eval/main.py appends (``--version back``).
                            Benchmarks.

Rows without an image, without an answer, or with an image that does not decode are not written:
each one is listed with its id and reason in `<split>.bad_rows.jsonl` next to the parquet, counted
in the summary, and printed. With `--fail-on-bad-rows` a split with a bad row gets its bad-rows list
and no parquet (an earlier one is removed: no file is left that a later run could take for the whole
split), and the command exits with status 1. A split is written as `<split>.parquet.partial` and
renamed when complete: an interrupted run leaves the earlier parquet, if any, as it was, and at most
a `.partial` file (only if the process is killed outright), which no reader takes for a split.

Mistakes in the command (a flag, the --input path, a split or column that is not there) are one line
on stderr and exit status 2 (vgpo_verl.cli).
"""

from __future__ import annotations

import ast
import dataclasses
import io
import json
import re
import sys
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from mathruler.grader import extract_boxed_content
from PIL import Image

from vgpo_verl import cli
from vgpo_verl.cli import UsageError

PROG = "python -m vgpo_verl.data"

# The instruction texts of the two templates (see the module doc), and what joins them to the question.
PERCEPTION_INSTRUCTION = (
    "You first think through the reasoning process as an internal monologue, enclosed within <think> </think> "
    "tags. Then, provide your final answer enclosed within \\boxed{}."
)
MATH_INSTRUCTION = (
    "You FIRST think about the reasoning process as an internal monologue and then provide the final answer. "
    "The reasoning process MUST BE enclosed within <think> </think> tags. "
    "The final answer MUST BE put in \\boxed{}."
)
PROMPTS: dict[str, tuple[str, str]] = {
    "math_format_perception": ("\n\n", PERCEPTION_INSTRUCTION),
    "math": (" ", MATH_INSTRUCTION),
}


def render_prompt(template: str, question: str) -> str:
    """The template applied to the question: ``{{ content | trim }}<separator><instruction>``."""
    try:
        separator, instruction = PROMPTS[template]
    except KeyError:
        raise ValueError(f"unknown prompt template {template!r}; the templates are {sorted(PROMPTS)}") from None
    return f"{question.strip()}{separator}{instruction}"


# Spec: training images between 262,144 and 4,194,304 pixels; the evaluation protocol 262,144..1,000,000.
TRAIN_PIXELS = (262_144, 4_194_304)
EVAL_PIXELS = (262_144, 1_000_000)

IMAGE_MARKER = "<image>"
# The question of a row whose question is printed in the image only (MMMU-Pro's vision setting). [ours]
QUESTION_IN_IMAGE = "Answer the question shown in the image."
_NUMBERED_MARKER = re.compile(r"<image[ _]?(\d+)>")
_LETTERED_OPTIONS = re.compile(r"(?:^|[;\n])\s*\(?([A-J])[.:)：]\s*")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset lives, which of its columns hold what (first name present wins), and its prompt."""

    name: str
    hf_name: str | None
    default_split: str
    pixels: tuple[int, int]
    prompt: str  # a PROMPTS key
    source_note: str  # the card or loader this spec follows
    id_cols: tuple[str, ...] = ("id", "qid", "pid", "ID", "sample_index", "index")
    question_cols: tuple[str, ...] = ("problem", "question")
    answer_cols: tuple[str, ...] = ("answer",)
    image_cols: tuple[str, ...] = ("images", "image", "decoded_image", "image_path")
    # Columns that are ALL images of one row, in order (MMMU's image_1..image_7); used when present.
    all_image_cols: tuple[str, ...] = ()
    # A column of options to list after the question as (A) ... (MMMU-Pro's standard setting only).
    options_col: str | None = None
    # The answer is the text of the right choice in this column; the letter of it is the ground truth.
    answer_is_choice_of: str | None = None
    # The answer is written `\\boxed{x}` (TIGER-Lab ViRL39K card): the ground truth is x.
    answer_boxed: bool = False
    # Builds the question from the row when it is not one column (WeMath's Look-Back format).
    question_from_row: Callable[[dict], str] | None = None
    id_from_row: Callable[[dict], str] | None = None
    # Rows in a chat layout ({"messages": [user, assistant], "images": [...]}, Look-Back's GeoMath loader).
    chat_rows: bool = False
    meta_cols: tuple[str, ...] = ()
    hf_config: str | None = None
    # The question is printed in the image only: the prompt asks to answer it (QUESTION_IN_IMAGE).
    question_in_image: bool = False
    # Why `--hf-name` cannot work for this release (then --input is required).
    hub_refusal: str | None = None
    # Output file name of an input split, where they differ (PAPO_MMK12_test's `train` split is a test set).
    output_split: dict[str, str] = dataclasses.field(default_factory=dict)
    # Benchmark subsets (rows outside are counted as `outside_subset`, not as bad rows).
    subset: Callable[[dict], bool] | None = None
    subset_doc: str = ""


def _mathverse_vision_only(row: dict) -> bool:
    return str(row.get("problem_version", "")).strip().lower() == "vision only"


def _wemath_question(row: dict) -> str:
    # Look-Back eval/utils/data_loaders.py load_wemath_dataset, verbatim layout.
    return f"{row['question']}\n\nOptions: {row['option']}\nYour final answer must be one of A, B, C, or D."


def _wemath_id(row: dict) -> str:
    return f"{row['ID']}@{row['key']}"  # Look-Back's id: a problem's ID repeats across its steps


_TRAINING = dict(pixels=TRAIN_PIXELS, prompt="math_format_perception")
_BENCHMARK = dict(pixels=EVAL_PIXELS, prompt="math")

# Hub names as published; `--hf-name` overrides, `--input` needs none.
DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        DatasetSpec("virl39k", "PAPOGalaxy/PAPO_ViRL39K_train", "train", **_TRAINING,
                    source_note="card PAPOGalaxy/PAPO_ViRL39K_train: problem (with <image> markers), answer, "
                                "images (list of image bytes); the authors' train_vgpo_7B.sh TRAIN_FILE"),
        DatasetSpec("virl39k_tiger", None, "train", **_TRAINING, answer_boxed=True,
                    question_cols=("question",), image_cols=("image",), meta_cols=("category", "source"),
                    hub_refusal="TIGER-Lab/ViRL39K's `image` column holds paths into images.zip, which "
                                "`datasets` cannot load: download the snapshot and pass --input (the zip is read "
                                "in place), or use `virl39k` (the authors' PAPO release)",
                    source_note="card TIGER-Lab/ViRL39K: question, answer (always \\boxed{}), image (paths into "
                                "images.zip), qid, category, source"),
        DatasetSpec("mmk12", "PAPOGalaxy/PAPO_MMK12_test", "train", **_TRAINING, output_split={"train": "test"},
                    source_note="card PAPOGalaxy/PAPO_MMK12_test (MMK12's test set as PAPO adapted it; problem, "
                                "answer, images); the authors' train_vgpo_7B.sh VAL_FILE, read by EasyR1 as split "
                                "train"),
        DatasetSpec("mmk12_fanqingm", "FanqingM/MMK12", "test", **_TRAINING, meta_cols=("subject",),
                    source_note="card FanqingM/MMK12: id, subject, question, answer, image; split test"),
        DatasetSpec("geo3k", "hiyouga/geometry3k", "test", **_BENCHMARK,
                    source_note="card hiyouga/geometry3k: problem (with <image>), answer, images"),
        DatasetSpec("mathvista", "AI4Math/MathVista", "testmini", **_BENCHMARK, question_cols=("query",),
                    answer_is_choice_of="choices", meta_cols=("pid", "question_type", "answer_type", "precision", "unit"),
                    source_note="Look-Back load_mathvista_dataset: question = query (it carries the hint, unit, "
                                "precision and choices), a multi_choice answer becomes the letter of its choice"),
        DatasetSpec("mathverse", "AI4Math/MathVerse", "testmini", **_BENCHMARK, hf_config="testmini",
                    question_cols=("query_cot",), meta_cols=("sample_index", "problem_index", "problem_version",
                                                             "question_type"),
                    source_note="Look-Back load_mathverse_dataset: testmini (all five versions, 3,940 rows), "
                                "question = query_cot, answer"),
        DatasetSpec("mathverse_vision", "AI4Math/MathVerse", "testmini", **_BENCHMARK, hf_config="testmini",
                    question_cols=("query_cot",), meta_cols=("sample_index", "problem_index", "problem_version",
                                                             "question_type"),
                    subset=_mathverse_vision_only, subset_doc="problem_version == 'Vision Only'",
                    source_note="as mathverse, the Vision Only version"),
        DatasetSpec("wemath", "We-Math/We-Math", "testmini", **_BENCHMARK, question_from_row=_wemath_question,
                    id_from_row=_wemath_id, meta_cols=("ID", "key", "knowledge concept", "question number"),
                    source_note="Look-Back load_wemath_dataset: question + options + 'one of A, B, C, or D', "
                                "id = ID@key; ID and key kept for WeMath's 4-dimensional score"),
        DatasetSpec("logicvista", "lscpku/LogicVista", "test", **_BENCHMARK, meta_cols=("skill",),
                    source_note="card lscpku/LogicVista: question (options inside), answer (a letter or several, "
                                "'A, C'; graded as is), image"),
        DatasetSpec("mmmu_pro", "MMMU/MMMU_Pro", "test", **_BENCHMARK, hf_config="standard (10 options)",
                    all_image_cols=tuple(f"image_{i}" for i in range(1, 8)), options_col="options",
                    meta_cols=("subject", "topic_difficulty"),
                    source_note="card MMMU/MMMU_Pro 'standard (10 options)': question, options (A-J, may hold "
                                "<image n>), answer letter, image_1..image_7"),
        DatasetSpec("mmmu_pro_vision", "MMMU/MMMU_Pro", "test", **_BENCHMARK, hf_config="vision",
                    question_in_image=True, meta_cols=("subject",),
                    source_note="card MMMU/MMMU_Pro 'vision': question and options are in the image (no text is "
                                "added), answer letter"),
        DatasetSpec("clevr_count", "BUAADreamer/clevr_count_70k", "test", **_BENCHMARK,
                    source_note="card BUAADreamer/clevr_count_70k: problem, answer (a count), images; split test"),
        DatasetSpec("superclevr", None, "test", **_BENCHMARK, chat_rows=True,
                    hub_refusal="no SuperCLEVR counting release on the hub could be checked; pass --input a json "
                                "in Look-Back's layout (id, images, messages)",
                    source_note="Look-Back's chat-layout loaders (GeoMath/Tallyqa): messages [user, assistant], "
                                "images (paths next to the json)"),
        DatasetSpec("geomath", None, "test", **_BENCHMARK, chat_rows=True,
                    hub_refusal="Look-Back reads GeoMath from a local GeoMath/GeoMath-data.json; pass it with --input",
                    source_note="Look-Back load_GeoMath_dataset: GeoMath-data.json, messages [user, assistant], "
                                "images (paths relative to the json's folder)"),
    ]
}


@dataclasses.dataclass
class BadRow:
    id: str
    reason: str


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


class BadRowError(ValueError):
    """A row that cannot become a training example; the message says why."""


def bad_rows_path(parquet_path: Path) -> Path:
    return parquet_path.with_suffix(".bad_rows.jsonl")


# ---------------------------------------------------------------------------------------------
# Reading the input.


INPUT_KINDS = "a parquet/json/jsonl file, a folder of them or a save_to_disk folder"


def read_rows(source: str | Path, split: str, batch_size: int = 256, config: str | None = None) -> Iterator[dict]:
    """Rows of `split` from a local file or directory, images left undecoded (raw bytes / paths).

    A source or split that is not there raises UsageError now, not when the first row is read.
    """
    source = cli.existing_path("--input", source, f"pass {INPUT_KINDS}", kind="any")
    if source.is_dir() and ((source / "dataset_info.json").exists() or (source / "dataset_dict.json").exists()):
        return _read_saved_dataset(source, split, batch_size)
    if source.is_file() and source.suffix not in (".parquet", ".json", ".jsonl"):
        raise UsageError(f"--input {source} is not a parquet, json or jsonl file", f"pass {INPUT_KINDS}")
    return _read_files([source] if source.is_file() else split_files(source, split, config), batch_size)


def _read_files(files: list[Path], batch_size: int) -> Iterator[dict]:
    for path in files:
        if path.suffix == ".parquet":
            for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
                yield from batch.to_pylist()
        else:
            yield from _read_json(path)


def split_files(directory: Path, split: str, config: str | None = None) -> list[Path]:
    """The files of ONE source for `split` under a folder (a hub snapshot or a local copy).

    A file belongs to the split when its name is the split (`testmini.json`), a shard of it
    (`testmini-00000-of-00001.parquet`), or it sits in a folder named after it (`testmini/...`):
    `annot_testmini.json` (MathVista) and `testmini_text_only.parquet` (MathVerse) are not the split.
    When parquet and json both hold it (MathVerse's testmini.json and testmini.parquet), parquet alone
    is read. A snapshot with one folder per config (MMMU-Pro) is narrowed to the `config` folder;
    files of one split in several folders are refused rather than mixed.
    """
    if config and (directory / config).is_dir():
        directory = directory / config
    candidates = sorted(
        p for p in directory.rglob("*") if p.is_file() and p.suffix in (".parquet", ".json", ".jsonl")
        and not p.name.endswith(".bad_rows.jsonl")
    )
    matching = [
        p for p in candidates
        if p.stem == split or p.stem.startswith(f"{split}-") or split in p.relative_to(directory).parts[:-1]
    ]
    if not matching and len(candidates) == 1:
        matching = candidates  # a release with one data file under another name (TIGER-Lab's 39Krelease.parquet)
    if not matching:
        found = [str(p.relative_to(directory)) for p in candidates][:10]
        raise UsageError(f"--input {directory} has no file for split {split!r} (found: {found})",
                         "name the split those files hold with --split, or pass the file itself as --input")
    if any(p.suffix == ".parquet" for p in matching):
        matching = [p for p in matching if p.suffix == ".parquet"]
    folders = sorted({str(p.parent.relative_to(directory)) for p in matching})
    if len(folders) > 1:
        raise UsageError(
            f"--input {directory} holds split {split!r} in several folders ({folders}), different configs or "
            "copies of the data", "pass --input <one of them>, or --hf-config <folder>"
        )
    return matching


def _read_json(path: Path) -> Iterator[dict]:
    """Rows of a json(l) file: a list of rows, {"data": [rows]}, or {id: row} (MathVista's annot_testmini.json)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        for line in text.splitlines():
            if line.strip():
                yield json.loads(line)
        return
    data = json.loads(text)
    if isinstance(data, list):
        yield from data
    elif isinstance(data, dict) and isinstance(data.get("data"), list):
        yield from data["data"]
    elif isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        yield from data.values()
    else:
        raise UsageError(f"--input {path} is not a json of rows",
                         "pass a json list of rows, {'data': [rows]} or {id: row}, or a jsonl file")


def _read_saved_dataset(directory: Path, split: str, batch_size: int) -> Iterator[dict]:
    import datasets

    loaded = datasets.load_from_disk(str(directory))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise UsageError(f"--input {directory} has no split {split!r}", f"pass --split one of {list(loaded)}")
        loaded = loaded[split]
    return _undecoded_rows(loaded, batch_size)


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
# Images by relative path: on disk or inside the release's zip archives.


class ImageFiles:
    """Reads an image given by a relative path from the input folder, its `images/` folder, or any zip
    archive under it (TIGER-Lab's ViRL39K ships its images as images.zip; MathVerse and MathVista as
    images.zip too). The zips are indexed once, on the first path not found on disk."""

    def __init__(self, root: Path | None):
        self.root = root
        self._zip_members: dict[str, tuple[Path, str]] | None = None

    def read(self, value: str) -> bytes:
        path = Path(value).expanduser()
        if path.is_absolute():
            if path.is_file():
                return path.read_bytes()
            raise BadRowError(f"unreadable image: file {value!r} not found")
        if self.root is not None:
            for candidate in (self.root / path, self.root / "images" / path):
                if candidate.is_file():
                    return candidate.read_bytes()
            found = self._zipped().get(path.as_posix()) or self._zipped().get(f"images/{path.as_posix()}")
            if found is not None:
                archive, member = found
                with zipfile.ZipFile(archive) as opened:
                    return opened.read(member)
        raise BadRowError(f"unreadable image: file {value!r} not found (image root {self.root}, its images/ "
                          f"folder and zips)")

    def _zipped(self) -> dict[str, tuple[Path, str]]:
        if self._zip_members is None:
            self._zip_members = {}
            for archive in sorted(self.root.rglob("*.zip")) if self.root is not None else []:
                with zipfile.ZipFile(archive) as opened:
                    for member in opened.namelist():
                        if not member.endswith("/"):
                            # Archives often wrap their content in one top folder: index both forms.
                            self._zip_members.setdefault(member, (archive, member))
                            self._zip_members.setdefault(member.split("/", 1)[-1], (archive, member))
        return self._zip_members


# ---------------------------------------------------------------------------------------------
# One row -> one verl example.


def _first(row: dict, columns: tuple[str, ...], override: str | None = None) -> tuple[str | None, Any]:
    if override:  # a column of every row: Columns.check
        return override, row[override]
    for column in columns:
        if column in row and row[column] is not None:
            return column, row[column]
    return None, None


def _image_bytes(value: Any, images: ImageFiles) -> list[bytes]:
    """Raw bytes of every image in a cell: HF image struct, bytes, path, PIL image, or a list of these."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [b for item in value for b in _image_bytes(item, images)]
    if hasattr(value, "tolist") and not isinstance(value, (bytes, str)):  # numpy array from pandas
        return _image_bytes(value.tolist(), images)
    if isinstance(value, dict):
        if value.get("bytes"):
            return [bytes(value["bytes"])]
        if value.get("path"):
            return _image_bytes(value["path"], images)
        return []
    if isinstance(value, (bytes, bytearray)):
        return [bytes(value)]
    if isinstance(value, Image.Image):
        buffer = io.BytesIO()  # decoded already: the original bytes are gone, PNG loses nothing
        value.save(buffer, format="PNG")
        return [buffer.getvalue()]
    if isinstance(value, str):
        return [images.read(value)] if value else []
    raise BadRowError(f"unreadable image: unsupported cell type {type(value).__name__}")


def _row_images(spec: DatasetSpec, row: dict, images: ImageFiles, columns: Columns) -> list[bytes]:
    """Raw bytes of the row's images. One column holds them, except MMMU's image_1..image_7. Of several
    candidate columns (MathVista's `image` path and `decoded_image` bytes: the same picture), the first
    that yields images wins; when none does, the first column's error is the row's reason."""
    spread = [row[c] for c in spec.all_image_cols if row.get(c) is not None]
    if spread and not columns.image:
        return [b for cell in spread for b in _image_bytes(cell, images)]
    candidates = [columns.image] if columns.image else [c for c in spec.image_cols if row.get(c) is not None]
    first_error = None
    for column in candidates:
        try:
            found = _image_bytes(row.get(column), images)
        except BadRowError as error:
            first_error = first_error or error
            continue
        if found:
            return found
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


def _letter(index: int) -> str:
    return chr(ord("A") + index)


def _ground_truth(spec: DatasetSpec, row: dict, answer: Any) -> str:
    """The dataset's answer as the authors' pipelines hand it to the grader (see the spec's flags)."""
    text = "" if answer is None else str(answer).strip()
    if spec.answer_boxed and text.startswith("\\boxed{"):
        text = extract_boxed_content(text)
    if spec.answer_is_choice_of and str(row.get("question_type", "multi_choice")) == "multi_choice":
        choices = parse_choices(row.get(spec.answer_is_choice_of))
        if choices:
            if text not in choices:
                raise BadRowError(f"no answer: answer {text[:40]!r} is not one of the choices {choices}")
            text = _letter(choices.index(text))  # Look-Back: the letter of the right choice
    if not text:
        raise BadRowError("no answer: empty answer")
    return text


def _chat_row(row: dict) -> dict:
    """A chat-layout row (Look-Back's GeoMath/Tallyqa json) as question/answer/images columns."""
    messages = row.get("messages")
    if hasattr(messages, "tolist"):
        messages = messages.tolist()
    if not isinstance(messages, list):
        raise BadRowError(f"no question: `messages` is {type(messages).__name__}, not a list of turns")
    by_role = {m.get("role"): m.get("content") for m in messages if isinstance(m, dict)}
    return {**row, "question": by_role.get("user"), "answer": by_role.get("assistant")}


def _with_markers(text: str, images: list[bytes]) -> tuple[str, list[bytes]]:
    """`<image>` markers and the images in their order: MMMU-style `<image 2> ... <image 1>` become plain
    markers with the images reordered; a text without markers gets them all in front (Look-Back puts the
    image before the question); a marker count that differs from the images is a bad row."""
    numbered = [int(n) for n in _NUMBERED_MARKER.findall(text)]
    if numbered:
        if max(numbered) > len(images):
            raise BadRowError(f"no image: the text refers to <image {max(numbered)}> but the row has {len(images)}")
        images = [images[n - 1] for n in numbered]
        text = _NUMBERED_MARKER.sub(IMAGE_MARKER, text)
    markers = text.count(IMAGE_MARKER)
    if markers == 0:
        return IMAGE_MARKER * len(images) + text, images
    if markers != len(images):
        raise BadRowError(f"unreadable image: the question has {markers} <image> markers for {len(images)} images")
    return text, images


@dataclasses.dataclass(frozen=True)
class Columns:
    """Command-line column overrides (None: the spec's candidates)."""

    id: str | None = None
    question: str | None = None
    answer: str | None = None
    image: str | None = None

    def check(self, row: dict) -> None:
        """A column named on the command line that the row lacks is the user's mistake, not a bad row."""
        for field in dataclasses.fields(self):
            column = getattr(self, field.name)
            if column is not None and column not in row:
                raise UsageError(f"--{field.name}-col {column!r} is not a column of the input",
                                 f"name one of {sorted(row)}")


def convert_row(
    spec: DatasetSpec,
    row: dict,
    index: int,
    split: str,
    pixels: tuple[int, int],
    images: ImageFiles = ImageFiles(None),
    columns: Columns = Columns(),
    prompt: str | None = None,
) -> dict:
    """One input row -> one verl row. Raises BadRowError (message = reason) for unusable rows."""
    columns.check(row)
    row_id = _row_id(spec, row, index, columns)
    if spec.chat_rows:
        row = _chat_row(row)
    if spec.question_in_image:
        question = QUESTION_IN_IMAGE
    elif spec.question_from_row is not None and not columns.question:
        question = spec.question_from_row(row)
    else:
        _, question = _first(row, spec.question_cols, columns.question)
        question = "" if question is None else str(question)
    if not question.strip():
        raise BadRowError("no question")
    if spec.options_col:
        options = parse_choices(row.get(spec.options_col))
        if options:
            question = question.rstrip() + "\nChoices:\n" + "\n".join(
                f"({_letter(i)}) {text}" for i, text in enumerate(options))
    _, answer = _first(row, spec.answer_cols, columns.answer)
    ground_truth = _ground_truth(spec, row, answer)

    image_bytes = _row_images(spec, row, images, columns)
    for position, data in enumerate(image_bytes):
        _check_decodes(data, position)
    question, image_bytes = _with_markers(question, image_bytes)

    min_pixels, max_pixels = pixels
    meta = {column: row[column] for column in spec.meta_cols if row.get(column) is not None}
    return {
        "data_source": spec.name,
        "prompt": [{"role": "user", "content": render_prompt(prompt or spec.prompt, question)}],
        "images": [{"bytes": data, "min_pixels": min_pixels, "max_pixels": max_pixels} for data in image_bytes],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": ground_truth},
        "extra_info": {
            "split": split,
            "index": index,
            "id": row_id,
            "question": question,
            "answer": "" if answer is None else str(answer),
            "meta": json.dumps(meta, default=str),
        },
    }


def _row_id(spec: DatasetSpec, row: dict, index: int, columns: Columns) -> str:
    if spec.id_from_row is not None and not columns.id:
        try:
            return spec.id_from_row(row)
        except KeyError:
            pass  # the row lacks an id column: named by its index, like any row without an id
    _, row_id = _first(row, spec.id_cols, columns.id)
    return str(index if row_id is None else row_id)


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
    output.parent.mkdir(parents=True, exist_ok=True)
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
                    report.bad_rows.append(BadRow(_row_id(spec, row, index, columns), str(bad)))
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


# ---------------------------------------------------------------------------------------------
# Command line.


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


if __name__ == "__main__":
    sys.exit(main())
