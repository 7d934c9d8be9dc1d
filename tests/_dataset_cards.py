"""Tiny local copies of the paper's datasets in their published layouts (column names, value formats,
file names of a hub snapshot). Each writer says which dataset card / loader its layout follows."""

import json
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from _recipes_utils import hf_image, png_bytes


def _parquet(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


# Card PAPOGalaxy/PAPO_ViRL39K_train: `images` (sequence of image: {bytes, path} structs), `problem`,
# `answer` (plain text: a letter, a number, a word); one split `train` in data/train-*.parquet. Problems
# carry `<image>` markers, at the start or after the options.
PAPO_VIRL_ROWS = [
    {"images": [hf_image(png_bytes(100, 100))], "problem": "<image>How many sides does the shape have?",
     "answer": "4"},
    {"images": [hf_image(png_bytes(90, 60, (0, 255, 0)))],
     "problem": "  Which is larger?\nA. the circle\nB. the square\n<image>  ", "answer": "B"},
    {"images": [hf_image(png_bytes(50, 70)), hf_image(png_bytes(70, 50))],
     "problem": "<image> and <image>: what is the total area in cm^2?", "answer": "30"},
]


def write_papo_virl39k(directory: Path) -> Path:
    _parquet(directory / "data" / "train-00000-of-00001.parquet", PAPO_VIRL_ROWS)
    return directory


# Card PAPOGalaxy/PAPO_MMK12_test: same columns as PAPO_ViRL39K_train; its one split is `train`.
def write_papo_mmk12(directory: Path) -> Path:
    rows = [{"images": [hf_image(png_bytes())], "problem": "<image>Find the value of x.", "answer": "\\frac{3}{2}"}]
    _parquet(directory / "data" / "train-00000-of-00001.parquet", rows)
    return directory


# Card TIGER-Lab/ViRL39K: 39Krelease.parquet with `question`, `answer` (always \boxed{}), `image` (a list
# of paths `images/...` into images.zip), `qid`, `category`, `source`.
def write_tiger_virl39k(directory: Path, zipped: bool = True) -> Path:
    rows = [
        {"qid": "q1", "question": "<image>How many sides? A. 3 B. 4", "answer": "\\boxed{B}",
         "image": ["images/q1.png"], "category": "(GradeSchool) Geometric", "source": "MMK12"},
        {"qid": "q2", "question": "<image> and <image>: which is taller?", "answer": "\\boxed{left}",
         "image": ["images/q2a.png", "images/q2b.png"], "category": "Spatial", "source": "LLaVA-OV"},
        {"qid": "q3", "question": "<image>Lost file.", "answer": "\\boxed{1}", "image": ["images/missing.png"],
         "category": "x", "source": "y"},
    ]
    images = {"images/q1.png": png_bytes(100, 100), "images/q2a.png": png_bytes(50, 70, (0, 255, 0)),
              "images/q2b.png": png_bytes(70, 50, (0, 0, 255))}
    directory.mkdir(parents=True, exist_ok=True)
    if zipped:
        with zipfile.ZipFile(directory / "images.zip", "w") as archive:
            for name, data in images.items():
                archive.writestr(name, data)
    else:
        for name, data in images.items():
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            (directory / name).write_bytes(data)
    _parquet(directory / "39Krelease.parquet", rows)
    return directory


# Card AI4Math/MathVista: data/testmini-*.parquet and data/test-*.parquet with pid, question, `query`
# (hint + question + "Choices:" list), choices (list or null), answer (the TEXT of the right choice),
# question_type (multi_choice / free_form), answer_type, precision, unit, image (path images/<pid>.jpg),
# decoded_image ({bytes, path}); the snapshot also holds annot_testmini.json ({pid: annotation}).
MATHVISTA_ROWS = [
    {"pid": "1", "question": "Which value is shown?",
     "query": "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end."
              "\nQuestion: Which value is shown?\nChoices:\n(A) 2\n(B) 3\n(C) 5",
     "choices": ["2", "3", "5"], "answer": "5", "question_type": "multi_choice", "answer_type": "text",
     "precision": None, "unit": None, "image": "images/1.jpg", "decoded_image": hf_image(png_bytes(40, 40))},
    {"pid": "2", "question": "What is the length?",
     "query": "Hint: Please answer the question requiring a floating-point number with one decimal place and provide "
              "the final value, e.g., 1.2, 1.3, 1.4, at the end.\nQuestion: What is the length?",
     "choices": None, "answer": "1.5", "question_type": "free_form", "answer_type": "float", "precision": 1.0,
     "unit": None, "image": "images/2.jpg", "decoded_image": hf_image(png_bytes(40, 41))},
]


def write_mathvista_snapshot(directory: Path) -> Path:
    _parquet(directory / "data" / "testmini-00000-of-00001-725687bf7a18d64b.parquet", MATHVISTA_ROWS)
    _parquet(directory / "data" / "test-00000-of-00002-6b81bd7f7e2065e6.parquet", MATHVISTA_ROWS[:1])
    annotations = {row["pid"]: {k: v for k, v in row.items() if k != "decoded_image"} for row in MATHVISTA_ROWS}
    (directory / "annot_testmini.json").write_text(json.dumps(annotations))
    (directory / "images").mkdir(exist_ok=True)
    for row in MATHVISTA_ROWS:
        (directory / row["image"]).write_bytes(row["decoded_image"]["bytes"])
    return directory


# Card AI4Math/MathVerse: testmini.json and testmini.parquet (the same 5 versions x problems; `image` a
# file name inside images/ for the json, bytes for the parquet), testmini_text_only.{json,parquet}
# (image-less); columns sample_index, problem_index, problem_version, question, image, answer,
# question_type, query_wo, query_cot, question_for_eval, metadata.
def _mathverse_rows(as_bytes: bool) -> list[dict]:
    rows = []
    for index, version in enumerate(["Text Dominant", "Vision Only"], start=1):
        rows.append({
            "sample_index": str(index), "problem_index": "1", "problem_version": version,
            "question": "" if version == "Vision Only" else "In the triangle, find x. Choices: A:1 B:2",
            "image": hf_image(png_bytes(60, 60)) if as_bytes else f"image_{index}.png",
            "answer": "B", "question_type": "multi-choice",
            "query_wo": "Please directly answer the question.", "query_cot": f"Please first conduct reasoning ({index}).",
            "question_for_eval": "find x",
        })
    return rows


def write_mathverse_snapshot(directory: Path) -> Path:
    _parquet(directory / "testmini.parquet", _mathverse_rows(as_bytes=True))
    (directory / "testmini.json").write_text(json.dumps(_mathverse_rows(as_bytes=False)))
    text_only = [{**row, "image": None, "problem_version": "Text Only"} for row in _mathverse_rows(as_bytes=False)]
    _parquet(directory / "testmini_text_only.parquet", text_only)
    (directory / "testmini_text_only.json").write_text(json.dumps(text_only))
    (directory / "images").mkdir(exist_ok=True)
    for index in (1, 2):
        (directory / "images" / f"image_{index}.png").write_bytes(png_bytes(60, 60))
    return directory


# Card MMMU/MMMU_Pro: one folder per config, `standard (10 options)/test-*.parquet`, `standard (4 options)/`,
# `vision/`. Standard: id, question (may hold `<image n>`), options (string repr of a list of up to 10, which
# may hold `<image n>` too), explanation, image_1..image_7, img_type, answer (a letter A-J), topic_difficulty,
# subject. Vision: id, image (question and options drawn in it), options, answer, subject.
def write_mmmu_pro_snapshot(directory: Path) -> Path:
    options = [f"option {i}" for i in range(9)] + ["<image 2>"]
    standard = [{
        "id": "test_Math_1", "question": "Which figure matches <image 1>?", "options": repr(options),
        "explanation": "", "image_1": hf_image(png_bytes(30, 30, (255, 0, 0))),
        "image_2": hf_image(png_bytes(31, 30, (0, 255, 0))), **{f"image_{i}": None for i in range(3, 8)},
        "img_type": "['Diagrams']", "answer": "J", "topic_difficulty": "Medium", "subject": "Math",
    }]
    _parquet(directory / "standard (10 options)" / "test-00000-of-00001.parquet", standard)
    four = [{**standard[0], "options": repr(options[:3] + ["<image 2>"]), "answer": "D"}]
    _parquet(directory / "standard (4 options)" / "test-00000-of-00001.parquet", four)
    vision = [{"id": "test_Math_1", "image": hf_image(png_bytes(80, 60)), "options": repr(options), "answer": "J",
               "subject": "Math"}]
    _parquet(directory / "vision" / "test-00000-of-00001.parquet", vision)
    return directory


# Card We-Math/We-Math (testmini, 1,740 rows): ID, split, knowledge concept, question, option
# ("A. ...; B. ...; ..."), answer (a letter), image_path (the image), key (e.g. "2steps_1"), question number,
# knowledge concept description. One problem ID repeats across its one-step and multi-step questions.
def write_wemath(directory: Path) -> Path:
    rows = [
        {"ID": "3steps_10", "split": "testmini", "knowledge concept": "Area of Parallelograms",
         "question": "What is the area?", "option": "A. 12; B. 24; C. 36; D. 48; E. No correct answer",
         "answer": "B", "image_path": hf_image(png_bytes()), "key": key, "question number": number,
         "knowledge concept description": "..."}
        for key, number in (("3steps_1", 1), ("3steps_multi", 4))
    ]
    _parquet(directory / "data" / "testmini-00000-of-00001.parquet", rows)
    return directory


# Card lscpku/LogicVista (test, 448 rows): question (options written inside), answer (one letter, or
# several as "A, C"), reasoning, image, skill, broad_capability, specific_capability, id.
def write_logicvista(directory: Path) -> Path:
    rows = [
        {"id": "1", "question": "Which two tiles fit? Select from A, B, C and D.", "answer": "A, C",
         "reasoning": "...", "image": hf_image(png_bytes()), "skill": "spatial", "broad_capability": "x",
         "specific_capability": "y"},
        {"id": "2", "question": "Which tile fits? Select from A, B, C and D.", "answer": "C", "reasoning": "...",
         "image": hf_image(png_bytes()), "skill": "inductive", "broad_capability": "x", "specific_capability": "y"},
    ]
    _parquet(directory / "data" / "test-00000-of-00001.parquet", rows)
    return directory


# Card BUAADreamer/clevr_count_70k: images (sequence of image), problem ("<image>How many items ..."),
# answer (a count); splits train (70k) and test (200).
def write_clevr_count(directory: Path) -> Path:
    rows = [{"images": [hf_image(png_bytes(48, 32))], "problem": "<image>How many items are there in the image?",
             "answer": "3"}]
    _parquet(directory / "data" / "test-00000-of-00001.parquet", rows)
    return directory


# Look-Back eval/utils/data_loaders.py load_GeoMath_dataset (and its Tallyqa loader, the same layout):
# a json list of {"id", "images": [path relative to the json's folder], "messages": [user, assistant]}.
def write_chat_layout(directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "imgs").mkdir(exist_ok=True)
    (directory / "imgs" / "0.png").write_bytes(png_bytes(40, 30))
    rows = [{"id": "geo_0", "images": ["imgs/0.png"],
             "messages": [{"role": "user", "content": "<image>Find the angle ABC."},
                          {"role": "assistant", "content": "60"}]}]
    path = directory / f"{name}.json"
    path.write_text(json.dumps(rows))
    return path
