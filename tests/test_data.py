"""vgpo_verl.data: local fixtures -> verl parquet, bad rows reported, and a round trip through verl's RLHFDataset."""

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from _recipes_utils import (
    png_bytes,
    write_geo3k_parquet,
    write_mathvista_json,
    write_mmmu_parquet,
    write_virl_folder,
)
from vgpo_verl import data
from vgpo_verl.data import DATASETS, INSTRUCTION, TRAIN_PIXELS, BadRowError, parse_choices

REPO = Path(__file__).resolve().parents[1]


def read_output(path):
    return pq.read_table(path).to_pylist()


@pytest.fixture
def geo3k_output(tmp_path):
    source = write_geo3k_parquet(tmp_path / "geometry3k")
    code = data.main(["geo3k", "--input", str(source), "--split", "test", "--out", str(tmp_path / "out")])
    assert code == 0
    return tmp_path / "out" / "geo3k" / "test.parquet"


def test_geo3k_rows_in_verls_format(geo3k_output):
    rows = read_output(geo3k_output)
    assert [r["reward_model"]["ground_truth"] for r in rows] == ["3", "4\\pi", "\\frac{1}{2}"]
    first = rows[0]
    assert first["data_source"] == "geo3k" and first["ability"] == "math"
    assert first["reward_model"]["style"] == "rule"
    (message,) = first["prompt"]
    assert message["role"] == "user"
    assert message["content"].startswith("<image>Find x.") and message["content"].endswith(INSTRUCTION)
    assert "<think>" in INSTRUCTION and "\\boxed{}" in INSTRUCTION
    # Images keep their original bytes, with the spec's training pixel bounds.
    assert first["images"][0]["bytes"] == png_bytes()
    assert (first["images"][0]["min_pixels"], first["images"][0]["max_pixels"]) == TRAIN_PIXELS
    assert Image.open(io.BytesIO(rows[1]["images"][0]["bytes"])).format == "JPEG"
    assert first["extra_info"]["split"] == "test" and first["extra_info"]["index"] == 0


def test_bad_rows_are_reported_with_ids_and_counted(tmp_path, capsys):
    source = write_geo3k_parquet(tmp_path / "geometry3k")
    assert data.main(["geo3k", "--input", str(source), "--split", "test", "--out", str(tmp_path / "out")]) == 0
    geo3k_output = tmp_path / "out" / "geo3k" / "test.parquet"
    bad = [json.loads(line) for line in data.bad_rows_path(geo3k_output).read_text().splitlines()]
    assert [(b["id"], b["reason"].split(":")[0]) for b in bad] == [
        ("3", "no image"),
        ("4", "no answer"),
        ("5", "unreadable image"),
    ]
    printed = capsys.readouterr()
    assert "wrote 3 rows" in printed.out and "3 bad rows NOT written" in printed.out
    assert "bad row id=5: unreadable image" in printed.err


def test_fail_on_bad_rows(tmp_path):
    source = write_geo3k_parquet(tmp_path / "geometry3k")
    args = ["geo3k", "--input", str(source), "--split", "test", "--out", str(tmp_path / "o"), "--fail-on-bad-rows"]
    assert data.main(args) == 1


def test_virl39k_paths_boxed_answers_and_missing_files(tmp_path):
    source = write_virl_folder(tmp_path / "ViRL39K")
    report = data.convert(DATASETS["virl39k"], data.read_rows(source, "train"), tmp_path / "out", "train", image_root=source)
    rows = read_output(report.output)
    assert [r["extra_info"]["id"] for r in rows] == ["q1", "q2"]
    assert [r["reward_model"]["ground_truth"] for r in rows] == ["B", "left"]  # \boxed{} unwrapped
    assert len(rows[1]["images"]) == 2 and rows[1]["prompt"][0]["content"].count("<image>") == 2
    assert [(b.id, b.reason.split(":")[0]) for b in report.bad_rows] == [("q3", "unreadable image")]
    assert "missing.png" in report.bad_rows[0].reason


def test_mathvista_choices_become_letters(tmp_path):
    source = write_mathvista_json(tmp_path / "MathVista")
    code = data.main(["mathvista", "--input", str(source), "--split", "testmini", "--out", str(tmp_path / "out")])
    assert code == 0
    rows = read_output(tmp_path / "out" / "mathvista" / "testmini.parquet")
    multiple_choice, free_form = rows
    assert multiple_choice["reward_model"]["ground_truth"] == "C"
    assert multiple_choice["extra_info"]["choices"] == ["2", "3", "5"]
    assert "(A) 2\n(B) 3\n(C) 5" in multiple_choice["prompt"][0]["content"]
    assert free_form["reward_model"]["ground_truth"] == "1.5" and free_form["extra_info"]["choices"] == []
    # Evaluation benchmarks carry the evaluation protocol's pixel bounds.
    assert multiple_choice["images"][0]["max_pixels"] == 1_000_000
    # The reward reads the choices back: the letter and the text of the right choice both score.
    from vgpo_verl.reward import compute_score

    info = multiple_choice["extra_info"]
    assert compute_score("mathvista", r"\boxed{C}", "C", info) == 1.0
    assert compute_score("mathvista", r"\boxed{5}", "C", info) == 1.0
    assert compute_score("mathvista", r"\boxed{3}", "C", info) == 0.0


def test_mmmu_numbered_markers_order_the_images(tmp_path):
    source = write_mmmu_parquet(tmp_path / "mmmu")
    report = data.convert(DATASETS["mmmu_pro"], data.read_rows(source, "test"), tmp_path / "out", "test")
    (row,) = read_output(report.output)
    assert row["prompt"][0]["content"].startswith("Compare <image> with <image>.")
    sizes = [Image.open(io.BytesIO(i["bytes"])).size for i in row["images"]]
    assert sizes == [(31, 30), (30, 30)]  # <image 2> first
    assert row["extra_info"]["choices"] == ["bigger", "smaller"] and row["reward_model"]["ground_truth"] == "B"


def test_save_to_disk_folder_and_subset(tmp_path):
    """A `datasets.save_to_disk` DatasetDict with an Image feature; MathVerse-Vision keeps its subset only."""
    import datasets

    features = datasets.Features(
        {"sample_index": datasets.Value("string"), "question": datasets.Value("string"),
         "answer": datasets.Value("string"), "problem_version": datasets.Value("string"), "image": datasets.Image()}
    )
    rows = {
        "sample_index": ["1", "2", "3"],
        "question": ["What is x?", "What is y?", "What is z?"],
        "answer": ["2", "A", "4"],
        "problem_version": ["Vision Only", "Text Dominant", "Vision Only"],
        "image": [{"bytes": png_bytes(), "path": None}, {"bytes": png_bytes(), "path": None}, None],
    }
    # A selection (indices mapping) on top of the table must be honoured: drop nothing, reverse the order.
    testmini = datasets.Dataset.from_dict(rows, features=features).select([2, 1, 0])
    datasets.DatasetDict({"testmini": testmini}).save_to_disk(
        str(tmp_path / "MathVerse")
    )
    report = data.convert(
        DATASETS["mathverse_vision"], data.read_rows(tmp_path / "MathVerse", "testmini"), tmp_path / "out", "testmini"
    )
    assert report.written == 1 and report.outside_subset == 1
    assert [(b.id, b.reason) for b in report.bad_rows] == [("3", "no image")]
    assert report.bad_rows and report.written + report.outside_subset + len(report.bad_rows) == 3
    (row,) = read_output(report.output)
    assert row["images"][0]["bytes"] == png_bytes()  # saved bytes, not a re-encode
    assert row["extra_info"]["id"] == "1"


def test_image_path_missing_but_bytes_present(tmp_path):
    """MathVista ships `image` (a path into an images/ folder) and `decoded_image` (bytes): either will do."""
    row = {"pid": "7", "question": "How many?", "answer": "2", "image": "images/7.jpg",
           "decoded_image": {"bytes": png_bytes(), "path": None}}
    report = data.convert(DATASETS["mathvista"], [row], tmp_path / "out", "testmini", image_root=tmp_path)
    assert report.written == 1 and not report.bad_rows
    assert read_output(report.output)[0]["images"][0]["bytes"] == png_bytes()


def test_question_shown_only_in_the_image(tmp_path):
    vision_only = {"sample_index": "9", "question": "", "answer": "B", "problem_version": "Vision Only",
                   "image": {"bytes": png_bytes(), "path": None}}
    report = data.convert(DATASETS["mathverse_vision"], [vision_only], tmp_path / "out", "testmini")
    (row,) = read_output(report.output)
    assert row["prompt"][0]["content"].startswith("<image>" + data.QUESTION_IN_IMAGE)
    # Training sets have no such rows: an empty question there is a bad row.
    report = data.convert(DATASETS["geo3k"], [{**vision_only, "images": vision_only["image"]}], tmp_path / "o2", "test")
    assert [(b.id, b.reason) for b in report.bad_rows] == [("9", "no question")]


def test_parse_choices_formats():
    assert parse_choices(["1", " 2 "]) == ["1", "2"]
    assert parse_choices("['x', 'y']") == ["x", "y"]
    assert parse_choices("A. 12; B. 15; C. 20") == ["12", "15", "20"]
    assert parse_choices(None) == [] and parse_choices("") == []
    with pytest.raises(BadRowError, match="bad choices"):
        parse_choices("twelve or fifteen")


def test_wrong_column_override_names_the_columns(tmp_path):
    source = write_geo3k_parquet(tmp_path / "g")
    with pytest.raises(KeyError, match="no_such_column"):
        data.main(["geo3k", "--input", str(source), "--split", "test", "--out", str(tmp_path), "--answer-col", "no_such_column"])


def test_missing_split_is_an_error(tmp_path):
    source = write_geo3k_parquet(tmp_path / "g")
    with pytest.raises(FileNotFoundError, match="validation"):
        list(data.read_rows(source, "validation"))


ROUND_TRIP = textwrap.dedent(
    """
    import asyncio, json, sys
    import vgpo_verl.cpu
    vgpo_verl.cpu.enable()  # the torchvision-free processor path of this machine
    from omegaconf import OmegaConf
    from verl.utils import hf_processor, hf_tokenizer
    from verl.utils.dataset.rl_dataset import RLHFDataset
    from vgpo_verl.demo.tiny_model import build_tiny_vlm

    parquet, model_dir = sys.argv[1], sys.argv[2]
    path = str(build_tiny_vlm(model_dir))
    tokenizer, processor = hf_tokenizer(path), hf_processor(path)
    assert processor is not None, "no multimodal processor"
    config = OmegaConf.create({"prompt_key": "prompt", "image_key": "images", "max_prompt_length": 4096,
                               "filter_overlong_prompts": True, "filter_overlong_prompts_workers": 1,
                               "return_raw_chat": True, "truncation": "error", "image_patch_size": 14,
                               "cache_dir": sys.argv[3]})
    dataset = RLHFDataset(parquet, tokenizer, config, processor)
    out = {"len": len(dataset), "rows": []}
    for i in range(len(dataset)):
        item = dataset[i]
        messages = item["raw_prompt"]
        kinds = [c["type"] for c in messages[0]["content"]]
        images, _ = asyncio.run(RLHFDataset.process_vision_info(messages, 14, config))
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=[text], images=images, return_tensors="pt")
        n_pad = int((inputs["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum())
        grid = inputs["image_grid_thw"].tolist()
        out["rows"].append({"kinds": kinds, "sizes": [im.size for im in images], "n_pad": n_pad, "grid": grid,
                            "ground_truth": item["reward_model"]["ground_truth"], "data_source": item["data_source"]})
    print("RESULT" + json.dumps(out))
    """
)


@pytest.mark.slow
def test_round_trip_through_verls_rlhf_dataset(geo3k_output, tmp_path):
    """verl's own RLHFDataset reads our parquet: images, prompt, answers, and the pixel bounds take effect."""
    result = subprocess.run(
        [sys.executable, "-c", ROUND_TRIP, str(geo3k_output), str(tmp_path / "tiny_vlm"), str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=600, cwd=REPO, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    out = json.loads(result.stdout.split("RESULT", 1)[1])
    assert out["len"] == 3  # verl's overlong/unreadable filter dropped nothing we wrote
    low, high = TRAIN_PIXELS
    for row, expected in zip(out["rows"], ["3", "4\\pi", "\\frac{1}{2}"], strict=True):
        assert row["data_source"] == "geo3k" and row["ground_truth"] == expected
        assert row["kinds"] == ["image", "text"]
        ((width, height),) = row["sizes"]
        assert low <= width * height <= high  # small fixtures upscaled, the 3000x2000 one downscaled
        ((t, h, w),) = row["grid"]
        assert row["n_pad"] == t * h * w // 4  # the processor expanded one <|image_pad|> per merged patch
    assert out["rows"][2]["sizes"][0][0] * out["rows"][2]["sizes"][0][1] < 3000 * 2000
