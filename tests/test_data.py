"""vgpo_verl.data: card-shaped local fixtures -> verl parquet, the authors' prompt, one source per split,
bad rows reported, and a round trip through verl's RLHFDataset."""

import io
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from jinja2 import Template
from PIL import Image

from _cli_utils import module_usage_error, usage_error
from _dataset_cards import (
    MATHVISTA_ROWS,
    PAPO_VIRL_ROWS,
    write_chat_layout,
    write_clevr_count,
    write_logicvista,
    write_mathverse_snapshot,
    write_mathvista_snapshot,
    write_mmmu_pro_snapshot,
    write_papo_mmk12,
    write_papo_virl39k,
    write_tiger_virl39k,
    write_wemath,
)
from _recipes_utils import png_bytes, write_geo3k_parquet
from vgpo_verl.cli import UsageError
from vgpo_verl.data import cli, sources, writer
from vgpo_verl.data.datasets import DATASETS, EVAL_PIXELS, QUESTION_IN_IMAGE, TRAIN_PIXELS
from vgpo_verl.data.grading import score
from vgpo_verl.data.rows import BadRowError, parse_choices

REPO = Path(__file__).resolve().parents[1]

# The VGPO authors' examples/format_prompt/math_format_perception.jinja (github wzb-bupt/VGPO), as their
# EasyR1 dataset renders it: Template(file.strip()).render(content=problem).
AUTHORS_PERCEPTION_TEMPLATE = (
    "{{ content | trim }}\n\nYou first think through the reasoning process as an internal monologue, enclosed "
    "within <think> </think> tags. Then, provide your final answer enclosed within \\boxed{}."
)
# Their examples/format_prompt/math.jinja; Look-Back's eval/main.py appends the same text after a space.
AUTHORS_MATH_TEMPLATE = (
    "{{ content | trim }} You FIRST think about the reasoning process as an internal monologue and then provide "
    "the final answer. The reasoning process MUST BE enclosed within <think> </think> tags. The final answer MUST "
    "BE put in \\boxed{}."
)


def authors_prompt(template: str, question: str) -> str:
    return Template(template.strip()).render(content=question)


def read_output(path):
    return pq.read_table(path).to_pylist()


def convert_main(*args) -> int:
    return cli.main([str(a) for a in args])


def test_virl39k_command_writes_the_authors_prompt(tmp_path):
    """`python -m vgpo_verl.data virl39k` on a PAPO_ViRL39K_train snapshot: their prompt, their answers."""
    source = write_papo_virl39k(tmp_path / "PAPO_ViRL39K_train")
    result = subprocess.run([sys.executable, "-m", "vgpo_verl.data", "virl39k", "--input", str(source),
                             "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr
    rows = read_output(tmp_path / "out" / "virl39k" / "train.parquet")
    assert len(rows) == len(PAPO_VIRL_ROWS)
    for row, source_row in zip(rows, PAPO_VIRL_ROWS, strict=True):
        assert row["prompt"][0]["content"] == authors_prompt(AUTHORS_PERCEPTION_TEMPLATE, source_row["problem"])
        assert row["reward_model"]["ground_truth"] == source_row["answer"]  # handed to the grader unchanged
        assert [i["bytes"] for i in row["images"]] == [i["bytes"] for i in source_row["images"]]
        assert (row["images"][0]["min_pixels"], row["images"][0]["max_pixels"]) == TRAIN_PIXELS
    # The `<image>` marker stays where the problem puts it (after the options here).
    assert rows[1]["prompt"][0]["content"].startswith("Which is larger?\nA. the circle\nB. the square\n<image>\n\n")


def test_mmk12_is_the_papo_test_set_written_as_test(tmp_path):
    source = write_papo_mmk12(tmp_path / "PAPO_MMK12_test")
    assert convert_main("mmk12", "--input", source, "--out", tmp_path / "out") == 0
    (row,) = read_output(tmp_path / "out" / "mmk12" / "test.parquet")  # the recipe's val_files
    assert row["reward_model"]["ground_truth"] == "\\frac{3}{2}"
    assert row["prompt"][0]["content"] == authors_prompt(AUTHORS_PERCEPTION_TEMPLATE, "<image>Find the value of x.")
    assert DATASETS["mmk12"].hf_name == "PAPOGalaxy/PAPO_MMK12_test"
    assert DATASETS["virl39k"].hf_name == "PAPOGalaxy/PAPO_ViRL39K_train"


def test_other_template_by_name(tmp_path):
    source = write_papo_virl39k(tmp_path / "v")
    assert convert_main("virl39k", "--input", source, "--out", tmp_path / "out", "--prompt", "math") == 0
    first = read_output(tmp_path / "out" / "virl39k" / "train.parquet")[0]
    assert first["prompt"][0]["content"] == authors_prompt(AUTHORS_MATH_TEMPLATE, PAPO_VIRL_ROWS[0]["problem"])
    with pytest.raises(ValueError, match="unknown prompt template 'r1v'"):
        writer.convert(DATASETS["virl39k"], [], tmp_path / "o", "train", prompt="r1v")


@pytest.mark.parametrize("zipped", [True, False])
def test_tiger_virl39k_from_its_zip_or_unzipped(tmp_path, zipped):
    source = write_tiger_virl39k(tmp_path / "ViRL39K", zipped=zipped)
    assert convert_main("virl39k_tiger", "--input", source, "--out", tmp_path / "out") == 0
    rows = read_output(tmp_path / "out" / "virl39k_tiger" / "train.parquet")
    assert [r["extra_info"]["id"] for r in rows] == ["q1", "q2"]
    assert [r["reward_model"]["ground_truth"] for r in rows] == ["B", "left"]  # \boxed{} unwrapped
    assert rows[1]["images"][1]["bytes"] == png_bytes(70, 50, (0, 0, 255))
    assert json.loads(rows[0]["extra_info"]["meta"]) == {"category": "(GradeSchool) Geometric", "source": "MMK12"}
    bad = [json.loads(line) for line in (tmp_path / "out/virl39k_tiger/train.bad_rows.jsonl").read_text().splitlines()]
    assert [(b["id"], b["reason"].split(":")[0]) for b in bad] == [("q3", "unreadable image")]


def test_tiger_virl39k_from_the_hub_is_refused_clearly(tmp_path, capsys):
    line = usage_error(capsys, cli.main, "virl39k_tiger", "--out", tmp_path)
    assert "error: virl39k_tiger needs --input; " in line and "images.zip" in line


def test_mathvista_snapshot_query_letters_and_one_source(tmp_path):
    """Look-Back: question = query (choices inside, not appended again), multi_choice answer -> its letter.
    The snapshot's annot_testmini.json and test split are not read for testmini."""
    source = write_mathvista_snapshot(tmp_path / "MathVista")
    assert convert_main("mathvista", "--input", source, "--out", tmp_path / "out") == 0
    rows = read_output(tmp_path / "out" / "mathvista" / "testmini.parquet")
    assert [r["extra_info"]["id"] for r in rows] == ["1", "2"]
    multiple_choice, free_form = rows
    assert multiple_choice["prompt"][0]["content"] == authors_prompt(
        AUTHORS_MATH_TEMPLATE, "<image>" + MATHVISTA_ROWS[0]["query"])
    assert multiple_choice["prompt"][0]["content"].count("(C) 5") == 1
    assert multiple_choice["reward_model"]["ground_truth"] == "C" and free_form["reward_model"]["ground_truth"] == "1.5"
    assert json.loads(free_form["extra_info"]["meta"])["precision"] == 1.0
    assert multiple_choice["images"][0]["max_pixels"] == EVAL_PIXELS[1]
    # The annotation file alone (a {pid: row} json, images in images/) converts too.
    assert convert_main("mathvista", "--input", source / "annot_testmini.json", "--out", tmp_path / "o2") == 0
    from_json = read_output(tmp_path / "o2" / "mathvista" / "testmini.parquet")
    assert [r["reward_model"]["ground_truth"] for r in from_json] == ["C", "1.5"]
    assert from_json[1]["images"][0]["bytes"] == MATHVISTA_ROWS[1]["decoded_image"]["bytes"]


def test_mathverse_snapshot_reads_one_source(tmp_path):
    source = write_mathverse_snapshot(tmp_path / "MathVerse")
    assert [p.name for p in sources.split_files(source, "testmini")] == ["testmini.parquet"]
    report = writer.convert(DATASETS["mathverse"], sources.read_rows(source, "testmini"), tmp_path / "out", "testmini")
    assert report.written == 2 and not report.bad_rows  # not 8: no json duplicates, no text-only rows
    rows = read_output(report.output)
    assert rows[1]["prompt"][0]["content"].startswith("<image>Please first conduct reasoning (2).")  # query_cot
    assert json.loads(rows[1]["extra_info"]["meta"])["problem_version"] == "Vision Only"
    vision = writer.convert(DATASETS["mathverse_vision"], sources.read_rows(source, "testmini"), tmp_path / "o", "testmini")
    assert (vision.written, vision.outside_subset) == (1, 1)
    # The json release on its own: images by file name from images/.
    from_json = writer.convert(DATASETS["mathverse"], sources.read_rows(source / "testmini.json", "testmini"),
                             tmp_path / "o3", "testmini", image_root=source)
    assert from_json.written == 2 and not from_json.bad_rows


def test_mmmu_pro_ten_options_images_in_options_and_vision(tmp_path):
    source = write_mmmu_pro_snapshot(tmp_path / "MMMU_Pro")
    with pytest.raises(ValueError, match="several folders"):
        sources.split_files(source, "test")  # configs are never mixed
    assert convert_main("mmmu_pro", "--input", source, "--out", tmp_path / "out") == 0
    (row,) = read_output(tmp_path / "out" / "mmmu_pro" / "test.parquet")
    content = row["prompt"][0]["content"]
    assert "(J) <image>" in content and content.startswith("Which figure matches <image>?\nChoices:\n(A) option 0")
    sizes = [Image.open(io.BytesIO(i["bytes"])).size for i in row["images"]]
    assert sizes == [(30, 30), (31, 30)]  # the option's image is kept, in marker order
    assert row["reward_model"]["ground_truth"] == "J"
    assert convert_main("mmmu_pro_vision", "--input", source, "--out", tmp_path / "out") == 0
    (vision,) = read_output(tmp_path / "out" / "mmmu_pro_vision" / "test.parquet")
    assert vision["prompt"][0]["content"] == authors_prompt(AUTHORS_MATH_TEMPLATE, "<image>" + QUESTION_IN_IMAGE)
    assert "option" not in vision["prompt"][0]["content"] and vision["reward_model"]["ground_truth"] == "J"
    assert convert_main("mmmu_pro", "--input", source, "--hf-config", "standard (4 options)", "--out",
                        tmp_path / "o4") == 0
    assert read_output(tmp_path / "o4" / "mmmu_pro" / "test.parquet")[0]["reward_model"]["ground_truth"] == "D"


def test_wemath_lookback_question_and_ids(tmp_path):
    source = write_wemath(tmp_path / "We-Math")
    assert convert_main("wemath", "--input", source, "--out", tmp_path / "out") == 0
    rows = read_output(tmp_path / "out" / "wemath" / "testmini.parquet")
    assert [r["extra_info"]["id"] for r in rows] == ["3steps_10@3steps_1", "3steps_10@3steps_multi"]
    question = ("What is the area?\n\nOptions: A. 12; B. 24; C. 36; D. 48; E. No correct answer\n"
                "Your final answer must be one of A, B, C, or D.")
    assert rows[0]["prompt"][0]["content"] == authors_prompt(AUTHORS_MATH_TEMPLATE, "<image>" + question)
    meta = json.loads(rows[1]["extra_info"]["meta"])
    assert (meta["ID"], meta["key"], meta["knowledge concept"]) == ("3steps_10", "3steps_multi", "Area of Parallelograms")


def test_logicvista_multi_letter_answers_grade_as_the_papers_scorer(tmp_path):
    source = write_logicvista(tmp_path / "LogicVista")
    assert convert_main("logicvista", "--input", source, "--out", tmp_path / "out") == 0
    multi, single = read_output(tmp_path / "out" / "logicvista" / "test.parquet")
    assert multi["reward_model"]["ground_truth"] == "A, C"  # as the card writes it, no respelling
    gold = multi["reward_model"]["ground_truth"]
    assert score("\\boxed{A, C}", gold, "lookback") == 1.0
    assert score("\\boxed{AC}", gold, "lookback") == 0.0  # Look-Back's scorer does not accept the other spelling
    assert score("\\boxed{A and C}", single["reward_model"]["ground_truth"], "lookback") == 1.0  # C found in the box


@pytest.mark.parametrize("name", ["geomath", "superclevr"])
def test_chat_layout_benchmarks(tmp_path, name):
    path = write_chat_layout(tmp_path / name, name)
    assert convert_main(name, "--input", path, "--out", tmp_path / "out") == 0
    (row,) = read_output(tmp_path / "out" / name / "test.parquet")
    assert row["prompt"][0]["content"] == authors_prompt(AUTHORS_MATH_TEMPLATE, "<image>Find the angle ABC.")
    assert row["reward_model"]["ground_truth"] == "60" and row["extra_info"]["id"] == "geo_0"


def test_clevr_count(tmp_path):
    source = write_clevr_count(tmp_path / "clevr")
    assert convert_main("clevr_count", "--input", source, "--out", tmp_path / "out") == 0
    (row,) = read_output(tmp_path / "out" / "clevr_count" / "test.parquet")
    assert row["reward_model"]["ground_truth"] == "3"
    assert row["prompt"][0]["content"].startswith("<image>How many items are there in the image? You FIRST")


@pytest.fixture
def geo3k_output(tmp_path):
    source = write_geo3k_parquet(tmp_path / "geometry3k")
    assert convert_main("geo3k", "--input", source, "--out", tmp_path / "out") == 0
    return tmp_path / "out" / "geo3k" / "test.parquet"


def test_geo3k_rows_in_verls_format(geo3k_output):
    rows = read_output(geo3k_output)
    assert [r["reward_model"]["ground_truth"] for r in rows] == ["3", "4\\pi", "\\frac{1}{2}"]
    first = rows[0]
    assert first["data_source"] == "geo3k" and first["ability"] == "math"
    assert first["reward_model"]["style"] == "rule"
    (message,) = first["prompt"]
    assert message["role"] == "user"
    assert message["content"] == authors_prompt(AUTHORS_MATH_TEMPLATE, "<image>Find x.")
    assert first["images"][0]["bytes"] == png_bytes()  # original bytes
    assert Image.open(io.BytesIO(rows[1]["images"][0]["bytes"])).format == "JPEG"
    assert first["extra_info"]["split"] == "test" and first["extra_info"]["index"] == 0


def test_bad_rows_are_reported_with_ids_and_counted(tmp_path, capsys):
    source = write_geo3k_parquet(tmp_path / "geometry3k")
    assert convert_main("geo3k", "--input", source, "--out", tmp_path / "out") == 0
    geo3k_output = tmp_path / "out" / "geo3k" / "test.parquet"
    bad = [json.loads(line) for line in writer.bad_rows_path(geo3k_output).read_text().splitlines()]
    assert [(b["id"], b["reason"].split(":")[0]) for b in bad] == [
        ("3", "no image"),
        ("4", "no answer"),
        ("5", "unreadable image"),
    ]
    printed = capsys.readouterr()
    assert "wrote 3 rows" in printed.out and "3 bad rows NOT written" in printed.out
    assert "bad row id=5: unreadable image" in printed.err


@pytest.mark.parametrize("problem", ["", "   ", None])
def test_a_row_without_a_question_is_a_bad_row_of_that_kind(problem):
    from vgpo_verl.data.rows import convert_row

    row = {"images": [{"bytes": png_bytes(), "path": None}], "problem": problem, "answer": "3"}
    with pytest.raises(BadRowError, match=r"^no question$"):
        convert_row(DATASETS["geo3k"], row, 0, "test", EVAL_PIXELS)


@pytest.mark.parametrize("images, problem, reason", [
    ([png_bytes()], "<image><image>Find x.", r"^marker mismatch: the question has 2 <image> markers for 1 images$"),
    ([b"GIF89a-not-really"], "<image>Find x.",
     r"^unreadable image: image 0 is in no format PIL reads \(17 bytes, starting b'GIF89a-n'\)$"),
])
def test_a_bad_row_says_what_is_wrong_in_the_users_terms(images, problem, reason):
    from vgpo_verl.data.rows import convert_row

    row = {"images": [{"bytes": data, "path": None} for data in images], "problem": problem, "answer": "3"}
    with pytest.raises(BadRowError, match=reason):
        convert_row(DATASETS["geo3k"], row, 0, "test", EVAL_PIXELS)


def test_fail_on_bad_rows_leaves_no_parquet(tmp_path, capsys):
    """A refused split has its bad-rows list and no parquet, not even an earlier run's."""
    source = write_geo3k_parquet(tmp_path / "geometry3k")
    split_dir = tmp_path / "o" / "geo3k"
    assert convert_main("geo3k", "--input", source, "--out", tmp_path / "o") == 0  # an earlier run, bad rows left out
    assert len(read_output(split_dir / "test.parquet")) == 3
    capsys.readouterr()
    assert convert_main("geo3k", "--input", source, "--out", tmp_path / "o", "--fail-on-bad-rows") == 1
    assert sorted(p.name for p in split_dir.iterdir()) == ["test.bad_rows.jsonl"]
    bad = [json.loads(line)["id"] for line in (split_dir / "test.bad_rows.jsonl").read_text().splitlines()]
    assert bad == ["3", "4", "5"]
    printed = capsys.readouterr()
    assert "NO parquet written" in printed.out and "3 bad rows NOT written" in printed.out
    assert "bad row id=4: no answer" in printed.err
    # Without bad rows the flag changes nothing.
    assert convert_main("geo3k", "--input", source, "--out", tmp_path / "o", "--fail-on-bad-rows", "--limit", "3") == 0
    assert len(read_output(split_dir / "test.parquet")) == 3
    assert (split_dir / "test.bad_rows.jsonl").read_text() == ""


def test_a_crash_midway_leaves_the_earlier_split_as_it_was(tmp_path, monkeypatch):
    """A bug in the middle of a split propagates with its traceback; the earlier parquet and bad-rows
    list stay as they were and no partial file is left."""
    source = write_geo3k_parquet(tmp_path / "geometry3k")
    split_dir = tmp_path / "o" / "geo3k"
    assert convert_main("geo3k", "--input", source, "--out", tmp_path / "o") == 0
    before = {p.name: p.read_bytes() for p in split_dir.iterdir()}
    converted, convert_row = [], writer.convert_row

    def crash_on_the_second_row(*args, **kwargs):
        if converted:
            raise RuntimeError("planted bug")
        converted.append(convert_row(*args, **kwargs))
        return converted[-1]

    monkeypatch.setattr(writer, "convert_row", crash_on_the_second_row)
    with pytest.raises(RuntimeError, match="planted bug"):
        convert_main("geo3k", "--input", source, "--out", tmp_path / "o", "--fail-on-bad-rows")
    assert converted  # it crashed in the middle, not before the first row
    assert {p.name: p.read_bytes() for p in split_dir.iterdir()} == before


@pytest.mark.parametrize("argv, expected", [
    ([], "error: no dataset named; name one (python -m vgpo_verl.data --list shows them)"),
    (["geo4k"], "argument dataset: invalid choice: 'geo4k'"),
    (["geo3k", "--limit", "0"], "argument --limit: expected an integer >= 1, got '0'"),
    (["geo3k", "--input", "{source}", "--hf-name", "hiyouga/geometry3k"],
     "argument --hf-name: not allowed with argument --input"),
    (["geo3k", "--input", "{tmp}/nowhere"], "error: --input {tmp}/nowhere does not exist; pass a parquet"),
    (["geo3k", "--input", "{tmp}/notes.txt"], "error: --input {tmp}/notes.txt is not a parquet, json or jsonl file"),
    (["geo3k", "--input", "{source}", "--out", "{tmp}/notes.txt"], "error: --out {tmp}/notes.txt is a file"),
    (["geo3k", "--input", "{source}", "--image-root", "{tmp}/nowhere"], "error: --image-root {tmp}/nowhere does not exist"),
    (["geo3k", "--input", "{source}", "--min-pixels", "2000000"],
     "error: pixel bounds 2000000..1000000 are not 0 < min <= max; give --min-pixels at most --max-pixels"),
    (["geo3k", "--input", "{source}", "--answer-col", "solution"],
     "error: --answer-col 'solution' is not a column of the input; name one of ['answer', 'images', 'problem']"),
    (["geo3k", "--input", "{source}", "--image-col", "picture"], "error: --image-col 'picture' is not a column"),
    (["geo3k", "--input", "{source}", "--out", "{tmp}/notes.txt/o"],
     "error: cannot create {tmp}/notes.txt/o/geo3k (NotADirectoryError: Not a directory); pass an --out folder you"),
    (["geo3k", "--input", "{tmp}/lone", "--split", "train"],
     "error: --input {tmp}/lone has no file for split 'train' (found: ['test.jsonl'])"),
    (["geo3k", "--input", "{tmp}/lone_named", "--split", "train"],
     "error: --input {tmp}/lone_named has no file for split 'train' (found: ['geo3k_test.jsonl'])"),
    (["geo3k", "--hf-name", "{source}", "--split", "nope"],
     "error: --split 'nope': {source} (config None) has no such split; pass one of its splits with --split: "
     "['test', 'train']"),
])
def test_command_mistakes_are_one_line_and_write_nothing(tmp_path, capsys, argv, expected):
    source = write_geo3k_parquet(tmp_path / "geometry3k")
    (tmp_path / "notes.txt").write_text("not data")
    (tmp_path / "lone").mkdir()  # a folder whose only file is another split's
    (tmp_path / "lone" / "test.jsonl").write_text('{"problem": "<image>Find x.", "answer": "3", "images": []}\n')
    (tmp_path / "lone_named").mkdir()  # ... under a longer name that carries the split as a word
    (tmp_path / "lone_named" / "geo3k_test.jsonl").write_text((tmp_path / "lone" / "test.jsonl").read_text())
    fill = {"source": source, "tmp": tmp_path}
    line = usage_error(capsys, cli.main, *[a.format(**fill) for a in argv], *(["--out", tmp_path / "o"] * ("--out" not in argv)))
    assert line.startswith("python -m vgpo_verl.data: ") and expected.format(**fill) in line
    assert not (tmp_path / "o").exists(), "a refused command leaves no folder, not even an empty one"


def test_a_hub_that_cannot_be_reached_is_one_line_and_leaves_no_folder(tmp_path):
    """No hub access (offline here, as on many training machines): one line naming what to do, at once."""
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_CACHE": str(tmp_path / "hf" / "ds")}
    line = module_usage_error("vgpo_verl.data", "mmk12", "--out", tmp_path / "o", env=env)
    assert line.startswith("python -m vgpo_verl.data: error: cannot load PAPOGalaxy/PAPO_MMK12_test (config None, "
                           "split 'train') from the hub (ConnectionError: "), line
    assert "save_to_disk" in line and "pass --input DIR" in line
    assert not (tmp_path / "o").exists()


def test_no_network_fails_at_once_without_hf_hub_offline(tmp_path):
    """HF_HUB_OFFLINE unset and the hub unreachable (HF_ENDPOINT at a closed port, so even a machine with
    network sees this): one quick request fails, before `datasets` retries for half a minute."""
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "", "HF_HOME": str(tmp_path / "hf")}
    started = time.monotonic()
    line = module_usage_error("vgpo_verl.data", "mmk12", "--out", tmp_path / "o", env=env)
    assert "error: cannot reach PAPOGalaxy/PAPO_MMK12_test on the hub (ConnectError" in line and "--input DIR" in line
    assert time.monotonic() - started < 25  # the child's imports, one refused connection: no retry loop
    assert not (tmp_path / "o").exists()


def test_hf_name_loads_through_datasets_as_the_folder_converts(tmp_path):
    """--hf-name goes through `datasets` (the builder that names the splits, then its split): a local dataset
    folder gives the rows --input gives."""
    source = write_geo3k_parquet(tmp_path / "geometry3k")
    assert convert_main("geo3k", "--hf-name", source, "--split", "test", "--out", tmp_path / "hub") == 0
    assert convert_main("geo3k", "--input", source, "--split", "test", "--out", tmp_path / "folder") == 0
    rows = [pq.read_table(tmp_path / kind / "geo3k" / "test.parquet").to_pylist() for kind in ("hub", "folder")]
    assert len(rows[0]) == 3 and rows[0] == rows[1]


def test_a_missing_split_is_found_before_any_conversion(tmp_path, capsys):
    source = write_geo3k_parquet(tmp_path / "geometry3k")
    line = usage_error(capsys, cli.main, "geo3k", "--input", source, "--out", tmp_path / "o",
                       "--split", "test", "--split", "validation")
    assert f"error: --input {source} has no file for split 'validation' (found: ['data/test-00000-of-00001.parquet'" in line
    assert line.endswith("; name the split those files hold with --split, or pass the file itself as --input")
    assert not (tmp_path / "o" / "geo3k" / "test.parquet").exists()  # the good split was not converted first


def test_the_real_entry_reports_a_mistake_in_one_line(tmp_path):
    line = module_usage_error("vgpo_verl.data", "geo3k", "--input", tmp_path / "nowhere", "--out", tmp_path)
    assert line.startswith(f"python -m vgpo_verl.data: error: --input {tmp_path / 'nowhere'} does not exist; ")


def test_save_to_disk_folder_and_subset(tmp_path):
    """A `datasets.save_to_disk` DatasetDict with an Image feature; MathVerse-Vision keeps its subset only."""
    import datasets

    features = datasets.Features(
        {"sample_index": datasets.Value("string"), "query_cot": datasets.Value("string"),
         "answer": datasets.Value("string"), "problem_version": datasets.Value("string"), "image": datasets.Image()}
    )
    rows = {
        "sample_index": ["1", "2", "3"],
        "query_cot": ["What is x?", "What is y?", "What is z?"],
        "answer": ["2", "A", "4"],
        "problem_version": ["Vision Only", "Text Dominant", "Vision Only"],
        "image": [{"bytes": png_bytes(), "path": None}, {"bytes": png_bytes(), "path": None}, None],
    }
    # A selection (indices mapping) on top of the table must be honoured: drop nothing, reverse the order.
    testmini = datasets.Dataset.from_dict(rows, features=features).select([2, 1, 0])
    datasets.DatasetDict({"testmini": testmini}).save_to_disk(str(tmp_path / "MathVerse"))
    report = writer.convert(
        DATASETS["mathverse_vision"], sources.read_rows(tmp_path / "MathVerse", "testmini"), tmp_path / "out", "testmini"
    )
    assert report.written == 1 and report.outside_subset == 1
    assert [(b.id, b.reason) for b in report.bad_rows] == [("3", "no image")]
    (row,) = read_output(report.output)
    assert row["images"][0]["bytes"] == png_bytes()  # saved bytes, not a re-encode
    assert row["extra_info"]["id"] == "1"


def test_image_path_missing_but_bytes_present(tmp_path):
    """MathVista ships `image` (a path into an images/ folder) and `decoded_image` (bytes): either will do."""
    row = {**MATHVISTA_ROWS[1], "image": "images/not_here.jpg"}
    report = writer.convert(DATASETS["mathvista"], [row], tmp_path / "out", "testmini", image_root=tmp_path)
    assert report.written == 1 and not report.bad_rows


def test_parse_choices_formats():
    assert parse_choices(["1", " 2 "]) == ["1", "2"]
    assert parse_choices("['x', 'y']") == ["x", "y"]
    assert parse_choices("A. 12; B. 15; C. 20") == ["12", "15", "20"]
    assert parse_choices(None) == [] and parse_choices("") == []
    with pytest.raises(BadRowError, match="bad choices"):
        parse_choices("twelve or fifteen")


def test_missing_split_is_an_error_before_reading(tmp_path):
    source = write_geo3k_parquet(tmp_path / "g")
    with pytest.raises(UsageError, match="no file for split 'validation'"):
        sources.read_rows(source, "validation")  # raised by the call, not by the first row


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
