"""Small local stand-ins for the paper's datasets, made with Pillow (shared by the recipes helper's tests)."""

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def png_bytes(width=64, height=48, color=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(width=80, height=60) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 120, 240)).save(buffer, format="JPEG")
    return buffer.getvalue()


# A PNG cut in half: the header opens, the pixels do not decode.
TRUNCATED_PNG = png_bytes(300, 300, (1, 2, 3))[:60]


def hf_image(data: bytes | None) -> dict:
    """The struct HF `datasets` stores an Image feature as in parquet."""
    return {"bytes": data, "path": None}


def write_geo3k_parquet(directory: Path) -> Path:
    """geometry3k-style: `images` list, `problem` with an <image> marker, `answer`. Rows 3-5 are bad."""
    rows = [
        {"images": [hf_image(png_bytes())], "problem": "<image>Find x.", "answer": "3"},
        {"images": [hf_image(jpeg_bytes())], "problem": "<image>Find the area of the circle.", "answer": "4\\pi"},
        {"images": [hf_image(png_bytes(3000, 2000))], "problem": "<image>Find y.", "answer": "\\frac{1}{2}"},
        {"images": [], "problem": "<image>No picture here.", "answer": "5"},
        {"images": [hf_image(png_bytes())], "problem": "<image>Answer missing.", "answer": ""},
        {"images": [hf_image(TRUNCATED_PNG)], "problem": "<image>Broken picture.", "answer": "7"},
    ]
    path = directory / "data" / "test-00000-of-00001.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    # A second split that must not be picked up for `test`.
    pq.write_table(pa.Table.from_pylist(rows[:1]), directory / "data" / "train-00000-of-00001.parquet")
    return directory


def write_virl_folder(directory: Path) -> Path:
    """ViRL39K-style: image paths relative to the dataset folder, answers inside \\boxed{}."""
    (directory / "images").mkdir(parents=True, exist_ok=True)
    (directory / "images" / "q1.png").write_bytes(png_bytes(100, 100))
    (directory / "images" / "q2a.png").write_bytes(png_bytes(50, 70, (0, 255, 0)))
    (directory / "images" / "q2b.png").write_bytes(png_bytes(70, 50, (0, 0, 255)))
    rows = [
        {"qid": "q1", "question": "<image>How many sides? A. 3 B. 4", "answer": "\\boxed{B}", "image": ["images/q1.png"]},
        {"qid": "q2", "question": "<image> and <image>: which is taller?", "answer": "\\boxed{left}",
         "image": ["images/q2a.png", "images/q2b.png"]},
        {"qid": "q3", "question": "<image>Lost file.", "answer": "\\boxed{1}", "image": ["images/missing.png"]},
    ]
    pq.write_table(pa.Table.from_pylist(rows), directory / "train.parquet")
    return directory


def write_mathvista_json(directory: Path) -> Path:
    """MathVista-style jsonl: choices as a list and the answer as the text of the right choice."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "img1.png").write_bytes(png_bytes(40, 40))
    rows = [
        {"pid": "1", "question": "Which value is shown?", "choices": ["2", "3", "5"], "answer": "5", "image": "img1.png"},
        {"pid": "2", "question": "What is the length?", "choices": None, "answer": "1.5", "image": "img1.png"},
    ]
    path = directory / "testmini.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def write_mmmu_parquet(directory: Path) -> Path:
    """MMMU-Pro-style: image_1..image_7 columns, numbered markers, options as a string repr."""
    directory.mkdir(parents=True, exist_ok=True)
    first, second = png_bytes(30, 30, (255, 0, 0)), png_bytes(31, 30, (0, 255, 0))
    rows = [{
        "id": "validation_Math_1", "question": "Compare <image 2> with <image 1>.", "options": "['bigger', 'smaller']",
        "answer": "B", "image_1": hf_image(first), "image_2": hf_image(second),
        **{f"image_{i}": None for i in range(3, 8)},
    }]
    path = directory / "test.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path
