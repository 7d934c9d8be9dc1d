"""One input row -> one row of verl's RLHFDataset, or a BadRowError that says why the row is unusable.

A row without a question, without an answer, with unreadable choices, or with an image that is missing
or does not decode, or whose `<image>` markers do not match its images, is a bad row: its BadRowError's
message starts with the kind ("no question", "no answer", "bad choices", "no image", "unreadable image",
"marker mismatch"). ``vgpo_verl.data.writer`` lists bad rows
instead of writing them.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any

from mathruler.grader import extract_boxed_content
from PIL import Image

from vgpo_verl.cli import UsageError
from vgpo_verl.data.datasets import QUESTION_IN_IMAGE, DatasetSpec, render_prompt

IMAGE_MARKER = "<image>"
_NUMBERED_MARKER = re.compile(r"<image[ _]?(\d+)>")
_LETTERED_OPTIONS = re.compile(r"(?:^|[;\n])\s*\(?([A-J])[.:)：]\s*")


class BadRowError(ValueError):
    """A row that cannot become a training example; the message says why."""


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
    row_id = row_id_of(spec, row, index, columns)
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


def row_id_of(spec: DatasetSpec, row: dict, index: int, columns: Columns) -> str:
    """The row's id (what the bad-rows list names it by): the spec's own, its first id column, or its index."""
    if spec.id_from_row is not None and not columns.id:
        try:
            return spec.id_from_row(row)
        except KeyError:
            pass  # the row lacks an id column: named by its index, like any row without an id
    _, row_id = _first(row, spec.id_cols, columns.id)
    return str(index if row_id is None else row_id)


def _first(row: dict, columns: tuple[str, ...], override: str | None = None) -> tuple[str | None, Any]:
    if override:  # a column of every row: Columns.check
        return override, row[override]
    for column in columns:
        if column in row and row[column] is not None:
            return column, row[column]
    return None, None


def _chat_row(row: dict) -> dict:
    """A chat-layout row (Look-Back's GeoMath/Tallyqa json) as question/answer/images columns."""
    messages = row.get("messages")
    if hasattr(messages, "tolist"):
        messages = messages.tolist()
    if not isinstance(messages, list):
        raise BadRowError(f"no question: `messages` is {type(messages).__name__}, not a list of turns")
    by_role = {m.get("role"): m.get("content") for m in messages if isinstance(m, dict)}
    return {**row, "question": by_role.get("user"), "answer": by_role.get("assistant")}


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


def _check_decodes(data: bytes, position: int) -> None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decodes every pixel: truncated files fail here, not in the middle of training
            if image.width < 1 or image.height < 1:
                raise ValueError("empty image")
    except Image.UnidentifiedImageError:  # its message names our in-memory buffer, not the image
        raise BadRowError(f"unreadable image: image {position} is in no format PIL reads ({len(data)} bytes, "
                          f"starting {data[:8]!r})") from None
    except Exception as error:  # PIL raises many types; each means this image cannot be used
        raise BadRowError(f"unreadable image: image {position} does not decode ({type(error).__name__}: {error})")


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
        raise BadRowError(f"marker mismatch: the question has {markers} <image> markers for {len(images)} images")
    return text, images
