"""Synthetic visual tasks in verl's RL parquet format, on 112x112 white images of coloured shapes.

- "colour" (the demo's task): one large shape (circle, square or triangle, radius 30-50 px, so it
  covers several of the model's 16 image tokens) in one of four colours; "What colour is the
  shape?", answer `red` / `blue` / `green` / `orange`. Easy enough that the tiny 2-layer model
  learns it on a CPU in about a minute (vgpo_verl.demo.warm_start; with radius 12-20 px it stayed
  at chance for 200+ steps), and RL then has signal: a warm start that is right 25-60 % of the
  time gives groups of mixed rewards. Guessing gives 25 %.
- "count": 0-4 red circles among distractors (circles of other colours and red or other-coloured
  squares and triangles), none overlapping; "How many red circles?", answer the integer. A model
  that ignores the image cannot beat guessing; too hard for the tiny model to learn in minutes
  (its warm start stayed at chance), kept as a GPU sanity task.
- "describe" (the `--mechanism` experiment's task, vgpo_verl.demo.mechanism): the colour task's
  images, but the response reasons before it answers: it names the shape, says what it needs, and
  gives the colour only at its end, after 34 tokens (`reference_response`), so
  the one token the reward depends on has to look back at the image late in the response, where
  visual forgetting would hurt. Answer `red` / `blue` / `green` / `orange`, graded as "colour".

Either way a model that ignores the image cannot beat guessing. Answers are a plain word or
number, so every grader (math-verify's, mathruler's) compares them the same way.

Columns (what verl's RLHFDataset reads, as in vgpo_verl.data):
    data_source   "vgpo_shapes"
    prompt        [{"role": "user", "content": "<image>What colour is the shape? ... \\boxed{}."}]
    images        [{"bytes": PNG bytes}]
    ability       "colour" or "counting"
    reward_model  {"style": "rule", "ground_truth": "red"} (or "3")
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
COLOUR_QUESTION = "<image>What colour is the shape? Put the final answer in \\boxed{}."
DESCRIBE_QUESTION = ("<image>Describe the shape, then say what colour it is. "
                     "Put the final answer in \\boxed{}.")
# The describe task's response: the shape's kind twice (image-dependent description tokens), the
# colour only at the end. Every kind and colour is one token, so every response has one length.
DESCRIBE_TEMPLATE = ("The image shows one {kind} on a white background. To answer, I need the colour of the "
                     "{kind}, so I look at the {kind} once more. Its colour is \\boxed{{{answer}}}.")
TASKS = ("colour", "count", "describe")
DEFAULT_TASK = "colour"

COLOURS = {"red": (220, 30, 30), "blue": (30, 70, 220), "green": (30, 160, 60), "orange": (240, 150, 20)}
KINDS = ("circle", "square", "triangle")
COLOUR_RADIUS = (30, 50)  # px, the colour task's shape: large, so the colour reaches many image tokens


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


def make_colour_example(rng: random.Random) -> tuple[bytes, str, list[dict]]:
    """One image as PNG bytes with a single shape, its colour name, and the shape drawn."""
    colour = rng.choice(list(COLOURS))
    kind = rng.choice(KINDS)
    r = rng.randint(COLOUR_RADIUS[0], COLOUR_RADIUS[1])
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), "white")
    cx, cy = _place(rng, [], r)
    _draw(ImageDraw.Draw(image), kind, colour, cx, cy, r)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue(), colour, [{"kind": kind, "colour": colour, "x": cx, "y": cy, "r": r}]


def example(task: str, rng: random.Random) -> tuple[bytes, str, list[dict]]:
    """(PNG bytes, answer as the grader's ground truth string, shapes drawn) for `task`."""
    if task in ("colour", "describe"):
        return make_colour_example(rng)
    if task == "count":
        png, count, drawn = make_example(rng)
        return png, str(count), drawn
    raise ValueError(f"unknown shapes task {task!r}; allowed: {list(TASKS)}")


def question(task: str) -> str:
    """The user turn of `task`, with verl's `<image>` placeholder."""
    return {"colour": COLOUR_QUESTION, "count": QUESTION, "describe": DESCRIBE_QUESTION}[task]


def reference_response(task: str, answer: str, shapes: list[dict]) -> str:
    """A right response to `task` (what the warm start learns to say), without the end-of-turn token.

    colour and count: the boxed answer alone; describe: DESCRIBE_TEMPLATE about the one shape drawn.
    """
    if task == "describe":
        return DESCRIBE_TEMPLATE.format(kind=shapes[0]["kind"], answer=answer)
    return f"\\boxed{{{answer}}}"


def _rows(split: str, n: int, rng: random.Random, task: str) -> list[dict]:
    rows = []
    for index in range(n):
        png, answer, drawn = example(task, rng)
        rows.append(
            {
                "data_source": DATA_SOURCE,
                "prompt": [{"role": "user", "content": question(task)}],
                "images": [{"bytes": png}],
                "ability": "counting" if task == "count" else "colour",
                "reward_model": {"style": "rule", "ground_truth": answer},
                "extra_info": {"split": split, "index": index, "shapes": drawn},
            }
        )
    return rows


def make_dataset(out_dir, n_train: int, n_val: int, seed: int = 0,
                 task: str = DEFAULT_TASK) -> tuple[pathlib.Path, pathlib.Path]:
    """Write `train.parquet` and `val.parquet` under `out_dir`; the same seed gives the same files."""
    if n_train < 1 or n_val < 1:
        raise ValueError(f"make_dataset needs n_train >= 1 and n_val >= 1, got n_train={n_train}, n_val={n_val}")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for split, n, split_seed in (("train", n_train, seed), ("val", n_val, seed + 1_000_003)):
        path = out / f"{split}.parquet"
        pq.write_table(pa.Table.from_pylist(_rows(split, n, random.Random(split_seed), task)), path)
        paths.append(path)
    return paths[0], paths[1]


if __name__ == "__main__":
    import sys

    print(make_dataset(sys.argv[1] if len(sys.argv) > 1 else "/tmp/vgpo_shapes", 16, 8))
