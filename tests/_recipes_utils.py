"""Small local stand-ins for the paper's datasets, made with Pillow (shared by the recipes helper's tests)."""

import io
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
    """Card hiyouga/geometry3k: `images` list, `problem` with an <image> marker, `answer`. Rows 3-5 are bad."""
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
