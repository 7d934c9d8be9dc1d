"""`python -m vgpo_verl.report RUN`: one PNG page from verl's file logger or a W&B offline run; a RUN or
--out that is wrong is one line and exit status 2."""

import json

import pytest
from PIL import Image

from _cli_utils import module_usage_error, usage_error
from _logged_run import log_run, step_metrics
from vgpo_verl.report import runs
from vgpo_verl.report.__main__ import main
from vgpo_verl.report.page import focus_grid, series


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    with pytest.MonkeyPatch.context() as monkeypatch:
        return log_run(tmp_path_factory.mktemp("logged"), monkeypatch, steps=3, every=2)


def test_both_logs_read_the_same_metrics(logged):
    from_file, _ = runs.read_run(logged["file"])
    from_wandb, source = runs.read_run(logged["wandb"])
    assert source.suffix == ".wandb"
    assert sorted(from_file) == sorted(from_wandb) == [1, 2, 3]
    for step in (1, 2, 3):
        assert from_wandb[step] == pytest.approx(from_file[step])
        assert from_file[step] == pytest.approx({**step_metrics(step), **(
            {"val-core/shapes/acc/mean@1": 0.75} if step == 3 else {})})


def test_a_torn_wandb_file_reads_up_to_its_last_whole_record(logged, tmp_path):
    (whole,) = logged["wandb"].glob("run-*.wandb")
    data = whole.read_bytes()
    torn = tmp_path / "run-torn.wandb"
    torn.write_bytes(data[: len(data) - 50])  # a killed writer: the last record cut short
    assert runs.read_wandb_run(torn).keys() <= runs.read_wandb_run(whole).keys()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF  # a bad checksum ends the read there, it raises nothing
    torn.write_bytes(bytes(flipped))
    assert len(runs.read_wandb_run(torn)) <= 3


def test_page_of_each_log(logged, tmp_path, capsys):
    for name in ("file", "wandb"):
        out = tmp_path / f"{name}.png"
        assert main([str(logged[name]), "--out", str(out)]) == 0
        assert capsys.readouterr().out.strip() == str(out)
        with Image.open(out) as page:
            assert page.size == (1600, 900)
    assert main([str(logged["file"])]) == 0  # default: report.png next to the log
    assert (logged["file"].parent / "report.png").exists()


def test_page_panels_read_the_series():
    metrics = {1: step_metrics(1), 3: step_metrics(3), 2: {"critic/score/mean": 0.5}}
    assert series(metrics, "critic/score/mean") == ([1, 2, 3], [0.1, 0.5, pytest.approx(0.3)])
    steps, grid = focus_grid(metrics)
    assert steps == [1, 3] and grid[1] == [step_metrics(3)[f"vgpo/focus_by_position/bin_{k}"] for k in range(5)]


def test_a_dapo_run_has_a_page_too(tmp_path):
    log = tmp_path / "dapo.jsonl"
    log.write_text("\n".join(json.dumps({"step": s, "data": {"critic/score/mean": 0.1 * s}}) for s in (1, 2)))
    assert main([str(log)]) == 0 and (tmp_path / "report.png").stat().st_size > 10_000


def test_mistakes_are_one_line(tmp_path, capsys, logged):
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text('{"loss": 1.0}\n')
    binary = tmp_path / "weights.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    fake = tmp_path / "run-x.wandb"
    fake.write_bytes(b"not a wandb file at all")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    folder = tmp_path / "nothing_here"
    folder.mkdir()
    cases = {
        (tmp_path / "missing.jsonl",): "does not exist",
        (foreign,): "line 1: not a line of verl's file logger",
        (binary,): "is not text",
        (fake,): "not a W&B run file",
        (empty,): "holds no logged step",
        (folder,): "neither a W&B run file",
        (logged["file"], "--out", tmp_path): "is a folder",
        (logged["file"], "--out", tmp_path / "page.pdf"): "does not end in .png",
        (logged["file"], "--out", tmp_path / "no" / "page.png"): "does not exist",
    }
    for argv, expected in cases.items():
        assert expected in usage_error(capsys, main, *argv), argv


def test_the_module_runs(tmp_path):
    assert "RUN" in module_usage_error("vgpo_verl.report", tmp_path / "missing")
