"""A synthetic visual counting task in verl's RL parquet format: "How many red circles?".

Each image (112x112, white) holds 0-4 red circles among distractors: circles of other colours and
red or other-coloured squares and triangles, none overlapping. The ground truth is the integer
count, so a model that reads the image can solve it and one that ignores it cannot beat guessing;
on a GPU that makes it a meaningful sanity task for VGPO.

Columns (what verl's RLHFDataset reads, as in vgpo_verl.data):
    data_source   "vgpo_shapes"
    prompt        [{"role": "user", "content": "<image>How many red circles ...? ... \\boxed{}."}]
    images        [{"bytes": PNG bytes}]
    ability       "counting"
    reward_model  {"style": "rule", "ground_truth": "3"}
    extra_info    {"split", "index", "shapes"}  (shapes: what was drawn, for debugging)
"""

from __future__ import annotations

import io
import pathlib
import random

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

DATA_SOURCE = "vgpo_shapes"
IMAGE_SIZE = 112
MAX_TARGETS = 4
QUESTION = "<image>How many red circles are in the image? Put the final answer in \\boxed{}."

COLOURS = {"red": (220, 30, 30), "blue": (30, 70, 220), "green": (30, 160, 60), "orange": (240, 150, 20)}
KINDS = ("circle", "square", "triangle")


def _draw(draw: ImageDraw.ImageDraw, kind: str, colour: str, cx: int, cy: int, r: int) -> None:
    fill = COLOURS[colour]
    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif kind == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon(((cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)), fill=fill)


def _place(rng: random.Random, placed: list[tuple[int, int, int]], r: int) -> tuple[int, int]:
    """A centre for a shape of radius r inside the image, clear of every placed shape."""
    for _ in range(500):
        cx = rng.randint(r + 1, IMAGE_SIZE - r - 2)
        cy = rng.randint(r + 1, IMAGE_SIZE - r - 2)
        if all((cx - x) ** 2 + (cy - y) ** 2 > (r + pr + 3) ** 2 for x, y, pr in placed):
            return cx, cy
    raise RuntimeError(f"could not place a shape of radius {r} among {len(placed)} shapes")


def make_example(rng: random.Random) -> tuple[bytes, int, list[dict]]:
    """One image as PNG bytes, its number of red circles, and the list of shapes drawn."""
    targets = rng.randint(0, MAX_TARGETS)
    distractors = rng.randint(1, 4)
    shapes = [("circle", "red")] * targets
    for _ in range(distractors):
        kind = rng.choice(KINDS)
        colours = [c for c in COLOURS if not (kind == "circle" and c == "red")]
        shapes.append((kind, rng.choice(colours)))
    rng.shuffle(shapes)

    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), "white")
    draw = ImageDraw.Draw(image)
    placed: list[tuple[int, int, int]] = []
    drawn = []
    for kind, colour in shapes:
        r = rng.randint(7, 11)
        cx, cy = _place(rng, placed, r)
        placed.append((cx, cy, r))
        _draw(draw, kind, colour, cx, cy, r)
        drawn.append({"kind": kind, "colour": colour, "x": cx, "y": cy, "r": r})
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue(), targets, drawn


def _rows(split: str, n: int, rng: random.Random) -> list[dict]:
    rows = []
    for index in range(n):
        png, count, drawn = make_example(rng)
        rows.append(
            {
                "data_source": DATA_SOURCE,
                "prompt": [{"role": "user", "content": QUESTION}],
                "images": [{"bytes": png}],
                "ability": "counting",
                "reward_model": {"style": "rule", "ground_truth": str(count)},
                "extra_info": {"split": split, "index": index, "shapes": drawn},
            }
        )
    return rows


def make_dataset(out_dir, n_train: int, n_val: int, seed: int = 0) -> tuple[pathlib.Path, pathlib.Path]:
    """Write `train.parquet` and `val.parquet` under `out_dir`; the same seed gives the same files."""
    if n_train < 1 or n_val < 1:
        raise ValueError(f"make_dataset needs n_train >= 1 and n_val >= 1, got n_train={n_train}, n_val={n_val}")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for split, n, split_seed in (("train", n_train, seed), ("val", n_val, seed + 1_000_003)):
        path = out / f"{split}.parquet"
        pq.write_table(pa.Table.from_pylist(_rows(split, n, random.Random(split_seed))), path)
        paths.append(path)
    return paths[0], paths[1]


if __name__ == "__main__":
    import sys

    print(make_dataset(sys.argv[1] if len(sys.argv) > 1 else "/tmp/vgpo_shapes", 16, 8))
