"""`python -m vgpo_verl.report RUN`: one PNG page from verl's file logger or a W&B offline run; a RUN or
--out that is wrong is one line and exit status 2."""

import json
import math
import struct
import zlib

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
    capsys.readouterr()
    assert main([str(logged["file"].parent), "--out", str(tmp_path / "PAGE.PNG")]) == 0  # a demo run folder
    assert capsys.readouterr().out.strip() == str(tmp_path / "PAGE.PNG")
    assert main([str(logged["wandb"].parent)]) == 0  # W&B's own folder: its newest run
    assert capsys.readouterr().out.strip() == str(logged["wandb"] / "report.png")


def test_page_panels_read_the_series():
    metrics = {1: step_metrics(1), 3: step_metrics(3), 2: {"critic/score/mean": 0.5}}
    assert series(metrics, "critic/score/mean") == ([1, 2, 3], [0.1, 0.5, pytest.approx(0.3)])
    del metrics[1]["vgpo/focus_by_position/bin_4"]  # a fifth no response reached that step
    steps, grid = focus_grid(metrics)
    assert steps == [1, 3] and grid[1] == [step_metrics(3)[f"vgpo/focus_by_position/bin_{k}"] for k in range(5)]
    assert math.isnan(grid[0][4])  # a gap in the heatmap, not a zero


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
    not_a_dict = tmp_path / "list.jsonl"
    not_a_dict.write_text('{"step": 1, "data": [1, 2]}\n')
    fractional = tmp_path / "fractional.jsonl"
    fractional.write_text('{"step": 1.7, "data": {"a": 1}}\n')
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    folder = tmp_path / "nothing_here"
    folder.mkdir()
    cases = {
        (tmp_path / "missing.jsonl",): "does not exist",
        (foreign,): "line 1: not a line of verl's file logger",
        (binary,): "is not text",
        (not_a_dict,): "line 1: not a line of verl's file logger",
        (fractional,): "line 1: not a line of verl's file logger",
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


def _leveldb_log(payloads: list[bytes]) -> bytes:
    """W&B's transaction log as LevelDB's log writer lays it out: a 7-byte file header, then 32 KiB blocks
    of (crc32, length, type) + chunk; a block tail too short for a header is zero padding; a payload that
    does not fit is cut into FIRST, MIDDLE ..., LAST chunks."""
    out = bytearray(runs.WANDB_HEADER.pack(runs.WANDB_MAGIC, 0xBEE1, 0))
    for payload in payloads:
        first = True
        while True:
            room = runs.BLOCK_BYTES - len(out) % runs.BLOCK_BYTES
            if room < runs.RECORD_HEADER.size:
                out += bytes(room)
                continue
            chunk, payload = payload[: room - runs.RECORD_HEADER.size], payload[room - runs.RECORD_HEADER.size:]
            last = not payload
            kind = runs.FULL if first and last else runs.FIRST if first else runs.LAST if last else runs.MIDDLE
            out += runs.RECORD_HEADER.pack(zlib.crc32(chunk, zlib.crc32(bytes([kind]))), len(chunk), kind) + chunk
            first = False
            if last:
                break
    return bytes(out)


def _history(step: int, values: dict) -> bytes:
    from wandb.proto import wandb_internal_pb2

    record = wandb_internal_pb2.Record()
    record.history.step.num = step
    for key, value in values.items():
        item = record.history.item.add()
        item.nested_key.append(key)
        item.value_json = json.dumps(value)
    return record.SerializeToString()


def test_records_across_block_boundaries_and_many_blocks(tmp_path):
    """Records ending 3 and exactly 7 bytes before a block's end (padding, then an empty-room header), and one
    record over 64 KiB (FIRST, MIDDLE, LAST): every step reads back; a boolean is no metric."""
    steps = {1: {"a": 1.0, "flag": True}}
    payloads = [_history(1, steps[1])]
    for step, gap in ((2, 3), (3, 7)):  # a record whose end leaves `gap` bytes in its block
        start = len(_leveldb_log([*payloads, _history(step, {"n": 0.0, "pad": ""})]))
        for pad in range(max(0, runs.BLOCK_BYTES - start % runs.BLOCK_BYTES - gap - 64), runs.BLOCK_BYTES):
            trial = _leveldb_log([*payloads, _history(step, {"n": float(pad), "pad": "x" * pad})])
            if len(trial) % runs.BLOCK_BYTES == runs.BLOCK_BYTES - gap:
                break
        else:
            raise AssertionError(f"no padding ends a record {gap} bytes before a block's end")
        steps[step] = {"n": float(pad)}
        payloads.append(_history(step, {"n": float(pad), "pad": "x" * pad}))
    steps[4] = {f"key_{k}": float(k) for k in range(4000)}  # about 100 KiB: several blocks
    payloads.append(_history(4, steps[4]))
    log = tmp_path / "run-synthetic.wandb"
    log.write_bytes(_leveldb_log(payloads))
    assert len(log.read_bytes()) > 3 * runs.BLOCK_BYTES
    assert runs.read_wandb_run(log) == {1: {"a": 1.0}, 2: steps[2], 3: steps[3], 4: steps[4]}
