"""The visual-forgetting analysis: binning, rho scopes, ratio, plot and tables; end to end on the tiny VLM."""

from __future__ import annotations

import csv
import json
import math
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from vgpo_verl import analyze as an

from _analysis_utils import PYTHON, TINY_PIXELS, build_tiny_setup, run_module, write_benchmark, write_checkpoint_folder
from _cli_utils import module_usage_error, usage_error

TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"]


def _scores(lengths, similarity, group=None, has_visual=None) -> an.ResponseScores:
    lengths = torch.tensor(lengths)
    return an.ResponseScores(
        similarity=torch.tensor(similarity, dtype=torch.float32),
        offsets=torch.nn.functional.pad(lengths.cumsum(0), (1, 0)),
        group=torch.tensor(group if group is not None else list(range(len(lengths)))),
        has_visual=torch.tensor(has_visual if has_visual is not None else [True] * len(lengths)),
        sample_ids=[str(i) for i in range(len(lengths))],
        token_ids=[[0] * n for n in lengths.tolist()],
    )


def test_binned_curve_weighs_each_response_equally():
    # response 0: 5 tokens (tau 0, .25, .5, .75, 1), response 1: 2 tokens (tau 0, 1); two bins.
    values = torch.tensor([1.0, 3.0, 5.0, 7.0, 9.0, 10.0, 20.0])
    offsets = torch.tensor([0, 5, 7])
    curve = an.binned_curve(values, offsets, torch.tensor([True, True]), n_bins=2)
    # bin 0 (tau < .5): response 0 mean 2, response 1 mean 10 -> 6; bin 1: 7 and 20 -> 13.5
    assert curve["mean"] == pytest.approx([6.0, 13.5])
    assert curve["std"] == pytest.approx([4.0, 6.5])
    assert curve["responses_per_bin"] == [2, 2]
    assert curve["tokens_per_bin"] == [3, 4]

    only_first = an.binned_curve(values, offsets, torch.tensor([True, False]), n_bins=2)
    assert only_first["mean"] == pytest.approx([2.0, 7.0]) and only_first["tokens_per_bin"] == [2, 3]


def test_binned_curve_leaves_unreached_bins_empty():
    curve = an.binned_curve(torch.tensor([1.0, 2.0]), torch.tensor([0, 2]), torch.tensor([True]), n_bins=4)
    assert curve["mean"][0] == 1.0 and curve["mean"][3] == 2.0
    assert math.isnan(curve["mean"][1]) and curve["responses_per_bin"] == [1, 0, 0, 1]


def test_late_early_ratio_uses_thirds():
    assert an.late_early_ratio([4.0, 4.0, 4.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0]) == pytest.approx(0.5)
    # 10 bins: centres .05-.25 are early, .75-.95 late
    assert an.late_early_ratio([2, 2, 2, 9, 9, 9, 9, 1, 1, 1]) == pytest.approx(0.5)


def test_rho_scopes_follow_the_spec():
    # two responses of one prompt: trajectory min-max is per response, group min-max spans both.
    scores = _scores([2, 2], [0.0, 1.0, 2.0, 4.0], group=[0, 0])
    assert an.rho_of(scores, "trajectory").tolist() == pytest.approx([0, 1, 0, 1], abs=1e-6)
    assert an.rho_of(scores, "group").tolist() == pytest.approx([0, 0.25, 0.5, 1.0], abs=1e-6)
    separate = _scores([2, 2], [0.0, 1.0, 2.0, 4.0], group=[0, 1])
    assert an.rho_of(separate, "group").tolist() == pytest.approx([0, 1, 0, 1], abs=1e-6)
    with pytest.raises(ValueError, match="--rho-norm"):
        an.rho_of(scores, "batch-of-everything")


def _summary(scores: an.ResponseScores, n_bins: int) -> dict:
    return an.summarise("x", "path", scores, an.rho_of(scores, "trajectory"), n_bins)


def test_summary_counts_responses_without_an_image():
    scores = _scores([3, 3], [0.9, 0.5, 0.1, 0.0, 0.0, 0.0], has_visual=[True, False])
    summary = _summary(scores, 3)
    assert (summary["n_responses"], summary["n_without_visual"], summary["n_tokens"]) == (1, 1, 3)
    assert summary["similarity"]["mean"] == pytest.approx([0.9, 0.5, 0.1])
    assert summary["late_early_ratio"]["similarity"] == pytest.approx(0.1 / 0.9)
    with pytest.raises(ValueError, match="no response has an image token"):
        _summary(_scores([2], [0.1, 0.2], has_visual=[False]), 3)


def _pure_colour_pixels(path, hex_colour: str) -> int:
    pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
    rgb = [int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)]
    return int((pixels == rgb).all(axis=1).sum())


@pytest.mark.parametrize("n_checkpoints", [1, 3])
def test_plot_has_one_curve_per_checkpoint(tmp_path, n_checkpoints):
    generator = torch.Generator().manual_seed(0)
    lengths = [7, 12, 30]
    summaries = {}
    for k in range(n_checkpoints):
        similarity = torch.rand(sum(lengths), generator=generator) * 0.5 + 0.1 * k
        summaries[f"ckpt{k}"] = _summary(_scores(lengths, similarity.tolist()), 12)
    path = tmp_path / "plot.png"
    figure = an.plot_visual_focus(summaries, 12, "trajectory", path)

    with Image.open(path) as image:
        image.verify()  # a valid PNG
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert json.loads(image.text["Description"]) == {"curves": list(summaries), "bins": 12}
    for axis in figure.axes:
        assert len(axis.get_lines()) == n_checkpoints
        assert axis.get_xlabel().startswith("normalised decoding position") and axis.get_ylabel()
        assert len(axis.collections) == n_checkpoints  # one spread band per curve
    # The rendered file itself: each curve's colour is drawn, the next colour of the cycle is not.
    for k in range(n_checkpoints):
        assert _pure_colour_pixels(path, TAB10[k]) > 50, f"curve {k} is not in the PNG"
    assert _pure_colour_pixels(path, TAB10[n_checkpoints]) == 0


def test_replot_from_responses_jsonl(tmp_path):
    # two prompts, the first with two responses: the group scope spans them
    scores = _scores([3, 5, 4], [0.1, 0.5, 0.3, 0.9, 0.7, 0.5, 0.3, 0.1, 0.2, 0.2, 0.6, 0.4], group=[0, 0, 1])
    with (tmp_path / "responses.jsonl").open("w") as sink:
        an.write_responses("ckpt", "/path/ckpt", scores, an.rho_of(scores, "group"), ["a", "b", "c"], sink)
    (label, (checkpoint, back)), = an.read_responses(tmp_path / "responses.jsonl").items()
    assert (label, checkpoint) == ("ckpt", "/path/ckpt")
    assert back.group.tolist() == [0, 0, 1] and back.offsets.tolist() == [0, 3, 8, 12]
    assert back.similarity.tolist() == pytest.approx(scores.similarity.tolist())

    assert an.main(["--replot", str(tmp_path / "responses.jsonl"), "--out", str(tmp_path / "re"),
                    "--bins", "4", "--rho-norm", "trajectory"]) == 0
    document = json.loads((tmp_path / "re/visual_forgetting.json").read_text())
    assert document["checkpoints"]["ckpt"]["rho"]["mean"] == pytest.approx(
        _summary(scores, 4)["rho"]["mean"], abs=1e-5)  # _summary uses the trajectory scope
    assert (tmp_path / "re/visual_forgetting.png").exists()


def test_tables_hold_the_bins(tmp_path):
    scores = _scores([4, 6], [0.4, 0.3, 0.2, 0.1, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
    summaries = {"a": _summary(scores, 10), "b": _summary(scores, 10)}
    assert math.isnan(summaries["a"]["similarity"]["mean"][1])  # no response of 4 or 6 tokens reaches bin 1
    an.write_tables(summaries, {"bins": 10, "rho_norm": "trajectory"}, tmp_path)
    document = json.loads((tmp_path / "visual_forgetting.json").read_text())
    assert document["bins"]["edges"] == pytest.approx([i / 10 for i in range(11)])
    assert len(document["bins"]["centres"]) == 10
    assert document["checkpoints"]["a"]["similarity"]["mean"][1] is None
    for label in ("a", "b"):
        entry = document["checkpoints"][label]
        assert len(entry["similarity"]["mean"]) == len(entry["rho"]["std"]) == 10
        assert entry["late_early_ratio"]["similarity"] == pytest.approx(an.late_early_ratio(entry["similarity"]["mean"]))
    assert "NaN" not in (tmp_path / "visual_forgetting.json").read_text()
    rows = list(csv.DictReader((tmp_path / "visual_forgetting.csv").open()))
    assert len(rows) == 20 and rows[0]["checkpoint"] == "a" and rows[-1]["bin"] == "9"
    assert float(rows[0]["similarity_mean"]) == pytest.approx(0.5)  # bin 0: tokens 0.4 and 0.6


@pytest.fixture
def command_inputs(tmp_path, monkeypatch):
    """Paths that pass the command's checks (a 2-layer checkpoint folder, image prompts, a responses.jsonl),
    and a command that fails the test if it gets as far as loading a model."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the mistake was reported")

    monkeypatch.setattr(an, "analyze_checkpoint", refuse)
    write_benchmark(tmp_path / "prompts.parquet", {"0": "1", "1": "2"})
    frame = pd.read_parquet(tmp_path / "prompts.parquet")
    frame["prompt"] = [[{"role": "user", "content": "1 + 1?"}]] * 2
    frame["images"] = [[]] * 2
    frame.to_parquet(tmp_path / "text_only.parquet")
    (tmp_path / "responses.jsonl").write_text('{"checkpoint": "a", "sample_id": "0"}\n')
    (tmp_path / "notes.parquet").write_text("not a parquet file\n")
    return {"tmp": tmp_path, "ckpt": write_checkpoint_folder(tmp_path / "ckpt", n_layers=2),
            "data": tmp_path / "prompts.parquet"}


@pytest.mark.parametrize("argv, expected", [
    (["--data", "{data}"], "error: the following arguments are required: --out; see --help"),
    (["--out", "{tmp}/o", "--bins", "ten"], "argument --bins: invalid int value: 'ten'"),
    (["--out", "{tmp}/o", "--n", "0"], "argument --n: expected an integer >= 1, got '0'"),
    (["--out", "{tmp}/o", "--bins", "1"], "error: --bins 1 is out of range; use 2 to 100"),
    (["--out", "{tmp}/o", "--data", "{data}"], "error: no --checkpoint or no --data given; give --checkpoint"),
    (["--out", "{tmp}/o", "--checkpoint", "{ckpt}", "--data", "{tmp}/nowhere.parquet"],
     "error: --data {tmp}/nowhere.parquet does not exist; pass a verl-format parquet"),
    (["--out", "{tmp}/o", "--checkpoint", "{ckpt}", "--data", "{tmp}/text_only.parquet"],
     "error: --data {tmp}/text_only.parquet holds no prompt with an image"),
    (["--out", "{tmp}/o", "--checkpoint", "{ckpt}", "--data", "{tmp}/notes.parquet"],
     "error: {tmp}/notes.parquet is not a parquet file (ArrowInvalid: "),
    (["--out", "{tmp}/o", "--checkpoint", "{tmp}/nowhere", "--data", "{data}"],
     "error: --checkpoint {tmp}/nowhere does not exist"),
    (["--out", "{tmp}/o", "--checkpoint", "a={ckpt}", "--checkpoint", "a={ckpt}", "--data", "{data}"],
     "error: --checkpoint label 'a' is given twice"),
    (["--out", "{tmp}/o", "--checkpoint", "{ckpt}", "--data", "{data}", "--layer", "3"],
     "error: --layer 3 is not a layer of {ckpt} (2 decoder layers); use -1 (the final norm's output, the default) "
     "or a layer in -3..2"),
    (["--out", "{tmp}/o", "--checkpoint", "{ckpt}", "--data", "{data}", "--layer", "-4"],
     "error: --layer -4 is not a layer of {ckpt} (2 decoder layers)"),
    (["--out", "{tmp}/o", "--replot", "{tmp}/responses.jsonl", "--checkpoint", "{ckpt}"],
     "error: --replot redoes the plot from stored responses; it takes no --checkpoint or --data"),
    (["--out", "{tmp}/o", "--replot", "{tmp}/nowhere.jsonl"], "error: --replot {tmp}/nowhere.jsonl does not exist"),
    (["--out", "{tmp}/o", "--replot", "{tmp}/responses.jsonl"],
     "error: --replot {tmp}/responses.jsonl line 1 is not a response record (missing ['checkpoint_path', 'group',"),
])
def test_command_mistakes_are_one_line_before_any_model(command_inputs, capsys, argv, expected):
    line = usage_error(capsys, an.main, *[arg.format(**command_inputs) for arg in argv])
    assert line.startswith("python -m vgpo_verl.analyze: ") and expected.format(**command_inputs) in line
    assert not (command_inputs["tmp"] / "o").exists()


@pytest.mark.parametrize("layer", [-3, -1, 2])
def test_every_layer_the_training_side_allows_is_allowed(command_inputs, layer):
    """One range (vgpo_verl.methods.scoring.layer_range): -(n+1)..n on a decoder of n layers, as --help,
    docs/methods.md and the start-up check say."""
    from vgpo_verl.methods.scoring import layer_range

    an.check_layer(layer, str(command_inputs["ckpt"]))
    assert layer in layer_range(2)


def test_a_bug_is_not_a_usage_error(command_inputs, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("planted bug")

    monkeypatch.setattr(an, "analyze_checkpoint", broken)
    with pytest.raises(RuntimeError, match="planted bug"):
        an.main(["--out", str(command_inputs["tmp"] / "o"), "--checkpoint", str(command_inputs["ckpt"]),
                 "--data", str(command_inputs["data"]), "--layer", "-2"])
    # nothing --replot could take for a whole run (it once left a 0-byte responses.jsonl)
    assert not list((command_inputs["tmp"] / "o").glob("responses.jsonl*"))


def test_a_finished_run_leaves_its_whole_responses_file(tmp_path, monkeypatch):
    """analyze_all writes into responses.jsonl.partial and renames it once every checkpoint is done."""
    import types

    def analyzed(args, checkpoints, prompts, sink, summaries, html_parts):
        sink.write('{"checkpoint": "a"}\n')
        summaries["a"] = {}

    monkeypatch.setattr(an, "_analyze_into", analyzed)
    summaries, _ = an.analyze_all(types.SimpleNamespace(out=tmp_path), {"a": "ckpt"}, [])
    assert summaries == {"a": {}} and (tmp_path / "responses.jsonl").read_text() == '{"checkpoint": "a"}\n'
    assert not (tmp_path / "responses.jsonl.partial").exists()


def test_the_real_entry_reports_a_mistake_in_one_line(tmp_path):
    line = module_usage_error("vgpo_verl.analyze", "--out", tmp_path / "o", "--replot", tmp_path / "nowhere.jsonl")
    assert line == (f"python -m vgpo_verl.analyze: error: --replot {tmp_path / 'nowhere.jsonl'} does not exist; "
                    "pass the responses.jsonl an earlier run of this command wrote into its --out")


# ----------------------------------------------------------------------------------------------
# End to end on the demo's tiny Qwen2.5-VL. Model runs happen in child processes: the CPU vision
# path (vgpo_verl.cpu.enable) changes the environment of the process that turns it on.
# ----------------------------------------------------------------------------------------------
# Recomputes every response's similarity without the analysis code: one unpadded sequence at a time,
# the base model's last_hidden_state (post-norm), cosine to the mean over <|image_pad|> positions.
REFERENCE = r"""
import json, sys, torch
import vgpo_verl.cpu; vgpo_verl.cpu.enable()
from transformers import AutoModelForImageTextToText, AutoProcessor
from vgpo_verl.evaluate.backends import chat_text
from vgpo_verl.evaluate.benchmarks import load_benchmark
checkpoint, data, responses = sys.argv[1:4]
processor = AutoProcessor.from_pretrained(checkpoint, min_pixels=56 * 56, max_pixels=112 * 112)
model = AutoModelForImageTextToText.from_pretrained(checkpoint, dtype=torch.float32).eval()
prompts = {p.sample_id: p for p in load_benchmark(data, require_answer=False)}
worst = 0.0
for line in open(responses):
    record = json.loads(line)
    prompt = prompts[record["sample_id"]]
    enc = processor(text=[chat_text(processor, prompt)], images=prompt.images, return_tensors="pt")
    response = torch.tensor([record["token_ids"]])
    ids = torch.cat([enc["input_ids"], response], dim=1)
    types = torch.cat([enc["mm_token_type_ids"], torch.zeros_like(response)], dim=1)
    with torch.no_grad():
        hidden = model.model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=enc["pixel_values"],
                             image_grid_thw=enc["image_grid_thw"], mm_token_type_ids=types).last_hidden_state[0]
    mu = hidden[ids[0] == model.config.image_token_id].mean(dim=0)
    expected = torch.nn.functional.cosine_similarity(hidden[-response.shape[1]:], mu[None], dim=-1)
    worst = max(worst, (expected - torch.tensor(record["similarity"])).abs().max().item())
print(json.dumps({"worst": worst}))
"""


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    return build_tiny_setup(tmp_path_factory.mktemp("tiny"))


@pytest.mark.slow  # two model processes, about a minute on two shared cores
def test_analyze_end_to_end_on_the_tiny_model(tiny_setup, tmp_path):
    checkpoint, data = tiny_setup
    out = tmp_path / "analysis"
    run_module("vgpo_verl.analyze", "--cpu", "--backend", "transformers", "--checkpoint", f"first={checkpoint}",
                "--checkpoint", f"again={checkpoint}", "--data", str(data), "--out", str(out), "--bins", "10",
                "--max-new-tokens", "12", "--batch-size", "2", "--dtype", "float32", "--html", "1", *TINY_PIXELS)

    with Image.open(out / "visual_forgetting.png") as image:
        image.verify()
    with Image.open(out / "visual_forgetting.png") as image:
        assert json.loads(image.text["Description"]) == {"curves": ["first", "again"], "bins": 10}

    document = json.loads((out / "visual_forgetting.json").read_text())
    assert len(document["bins"]["edges"]) == 11
    assert list(document["checkpoints"]) == ["first", "again"]
    first, again = document["checkpoints"]["first"], document["checkpoints"]["again"]
    assert first["n_responses"] == 3 and first["n_without_visual"] == 0
    assert len(first["similarity"]["mean"]) == len(first["rho"]["mean"]) == 10
    assert all(-1.0 <= v <= 1.0 for v in first["similarity"]["mean"])
    assert all(0.0 <= v <= 1.0 for v in first["rho"]["mean"])
    assert math.isfinite(first["late_early_ratio"]["similarity"]) and math.isfinite(first["late_early_ratio"]["rho"])
    # the same checkpoint twice: greedy decoding and scoring are deterministic
    assert again["similarity"]["mean"] == pytest.approx(first["similarity"]["mean"], abs=1e-6)
    assert len(list(csv.DictReader((out / "visual_forgetting.csv").open()))) == 20

    records = [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines()]
    assert len(records) == 6
    assert all(len(r["similarity"]) == len(r["rho"]) == len(r["token_ids"]) > 0 for r in records)
    assert (out / "tokens.html").read_text().count("<h3>") == 2  # --html 1 per checkpoint

    # --replot needs no model: the same numbers again from responses.jsonl
    assert an.main(["--replot", str(out / "responses.jsonl"), "--out", str(tmp_path / "replot"), "--bins", "10"]) == 0
    replotted = json.loads((tmp_path / "replot/visual_forgetting.json").read_text())["checkpoints"]["first"]
    assert replotted["similarity"]["mean"] == pytest.approx(first["similarity"]["mean"], abs=1e-4)
    assert replotted["rho"]["mean"] == pytest.approx(first["rho"]["mean"], abs=1e-3)

    # The batched, padded scoring equals a plain per-sample recomputation from the model itself.
    reference = subprocess.run([PYTHON, "-c", REFERENCE, str(checkpoint), str(data), str(out / "responses.jsonl")],
                               capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr[-4000:]
    assert json.loads(reference.stdout.strip().splitlines()[-1])["worst"] < 1e-4
