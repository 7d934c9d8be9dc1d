"""The evaluation harness: planted outputs through the real grading path, resume, comparison, parquet loading."""

from __future__ import annotations

import json
import sys

import pandas as pd
import pytest

from vgpo_verl.evaluate import backends, benchmarks, protocol, scoring, tables
from vgpo_verl.evaluate import cli as evaluate_cli

from _analysis_utils import TINY_PIXELS, build_tiny_setup, run_module, write_benchmark, write_checkpoint_folder
from _cli_utils import module_usage_error, usage_error

# sample id -> (ground truth, planted response)
PLANTED = {
    "0": ("3", "<think>three circles</think> The answer is \\boxed{3}."),
    "1": ("12", "<think>count</think> \\boxed{12}"),
    "2": ("5", "<think>hmm</think> \\boxed{4}"),  # wrong
    "3": ("\\frac{1}{2}", "<think>half</think> \\boxed{0.5}"),  # right, math-verify equivalence
    "4": ("7", "no boxed answer at all: 7"),  # wrong: only the boxed answer counts
}
PLANTED_ACCURACY = 100.0 * 3 / 5


class PlantedBackend:
    """Returns a fixed response per sample id, records what it was asked, can fail after some calls."""

    name = "planted"

    def __init__(self, responses: dict[str, str], fail_after_calls: int | None = None):
        self.responses = responses
        self.fail_after_calls = fail_after_calls
        self.generated: list[str] = []
        self.calls = 0

    def generate(self, prompts, sampling):
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        self.generated += [p.sample_id for p in prompts]
        return [[backends.Completion(self.responses[p.sample_id], [1, 2, 3])] * sampling.n for p in prompts]


@pytest.fixture()
def benchmark(tmp_path):
    path = tmp_path / "planted.parquet"
    write_benchmark(path, {k: truth for k, (truth, _) in PLANTED.items()})
    return benchmarks.load_benchmark(path)


def _run(backend, benchmark, out_dir, label="ckpt", settings=None, **kwargs):
    settings = settings or {"checkpoint": label}
    return scoring.evaluate_checkpoint(label, backend, {"planted": benchmark}, out_dir, settings, progress=False,
                                       **kwargs)


def test_load_benchmark_reads_verl_parquet(benchmark):
    assert [p.sample_id for p in benchmark] == list(PLANTED)
    first = benchmark[0]
    assert first.ground_truth == "3" and first.data_source == "planted"
    assert first.messages[0]["content"][0] == {"type": "image"}
    assert first.messages[0]["content"][1]["text"].startswith("Question 0?")
    assert len(first.images) == 1 and first.images[0].size == (32, 32)


def test_load_benchmark_names_bad_rows(tmp_path):
    path = tmp_path / "bad.parquet"
    write_benchmark(path, {"0": "1", "1": "2"})
    frame = pd.read_parquet(path)
    frame.at[1, "images"] = []  # a placeholder without its image
    frame.to_parquet(path)
    with pytest.raises(ValueError, match=r"row 1 \(sample 1\).*1 <image> placeholder.*0 image"):
        benchmarks.load_benchmark(path)

    write_benchmark(path, {"0": "1", "1": "2"})
    frame = pd.read_parquet(path)
    frame.at[1, "images"] = [{"bytes": b"not an image", "path": None}]
    frame.to_parquet(path)
    broken = benchmarks.load_benchmark(path)[1]  # images are decoded when a batch needs them
    with pytest.raises(ValueError, match="planted sample 1: the image bytes do not decode"):
        broken.images

    write_benchmark(path, {"0": "1", "1": "2"})
    frame = pd.read_parquet(path)
    frame["extra_info"] = [{"index": 4}, {"index": 4}]
    frame.to_parquet(path)
    with pytest.raises(ValueError, match="not unique"):
        benchmarks.load_benchmark(path)


def test_planted_answers_give_the_right_accuracy(benchmark, tmp_path):
    backend = PlantedBackend({k: response for k, (_, response) in PLANTED.items()})
    results = _run(backend, benchmark, tmp_path)
    greedy = results["benchmarks"]["planted"]["greedy"]
    assert greedy["n"] == 5
    assert greedy["accuracy"] == pytest.approx(PLANTED_ACCURACY)

    records = [json.loads(line) for line in (tmp_path / "ckpt/samples/planted.greedy.jsonl").read_text().splitlines()]
    assert {r["sample_id"]: r["scores"] for r in records} == {"0": [1.0], "1": [1.0], "2": [0.0], "3": [1.0], "4": [0.0]}
    assert records[2]["predictions"] == ["4"] and records[4]["predictions"] == [None]

    on_disk = json.loads((tmp_path / "ckpt/results.json").read_text())
    assert on_disk["benchmarks"]["planted"]["greedy"]["accuracy"] == pytest.approx(PLANTED_ACCURACY)
    table = (tmp_path / "ckpt/results.md").read_text()
    assert "| planted | 5 | 60.00 |" in table


def test_avg_at_k_averages_over_samples(benchmark, tmp_path):
    responses = {k: response for k, (_, response) in PLANTED.items()}

    class HalfRight(PlantedBackend):  # sample "0": right on even draws only
        def generate(self, prompts, sampling):
            out = super().generate(prompts, sampling)
            if sampling.n > 1:
                for prompt, options in zip(prompts, out):
                    if prompt.sample_id == "0":
                        options[1::2] = [backends.Completion("\\boxed{99}", [1])] * len(options[1::2])
            return out

    results = _run(HalfRight(responses), benchmark, tmp_path, avg_k=4)
    assert results["modes"]["avg@4"]["temperature"] == protocol.AVG_K_TEMPERATURE
    assert results["modes"]["greedy"]["temperature"] == 0.0
    assert results["benchmarks"]["planted"]["greedy"]["accuracy"] == pytest.approx(60.0)
    assert results["benchmarks"]["planted"]["avg@4"]["accuracy"] == pytest.approx(100.0 * 2.5 / 5)


def test_resumed_run_skips_finished_samples(benchmark, tmp_path):
    responses = {k: response for k, (_, response) in PLANTED.items()}
    interrupted = PlantedBackend(responses, fail_after_calls=1)
    with pytest.raises(KeyboardInterrupt):
        _run(interrupted, benchmark, tmp_path, chunk_size=2)
    assert interrupted.generated == ["0", "1"]
    samples = tmp_path / "ckpt/samples/planted.greedy.jsonl"
    assert len(samples.read_text().splitlines()) == 2  # the finished chunk was saved

    # A write cut in the middle of the next record: that sample is redone, not trusted.
    with samples.open("a") as sink:
        sink.write('{"sample_id": "2", "scores": [1.')

    resumed = PlantedBackend(responses)
    results = _run(resumed, benchmark, tmp_path, chunk_size=2)
    assert resumed.generated == ["2", "3", "4"]
    assert results["benchmarks"]["planted"]["greedy"]["accuracy"] == pytest.approx(PLANTED_ACCURACY)
    assert results["benchmarks"]["planted"]["greedy"]["generated_now"] == 3
    assert sorted(json.loads(line)["sample_id"] for line in samples.read_text().splitlines()) == list(PLANTED)

    again = PlantedBackend(responses)
    _run(again, benchmark, tmp_path)
    assert again.generated == []


def test_regrade_fixes_stored_scores_without_generating(benchmark, tmp_path):
    responses = {k: response for k, (_, response) in PLANTED.items()}
    _run(PlantedBackend(responses), benchmark, tmp_path)
    samples = tmp_path / "ckpt/samples/planted.greedy.jsonl"
    records = [json.loads(line) for line in samples.read_text().splitlines()]
    records[3].update(scores=[0.0], accuracy=0.0)  # as an older grader that missed 0.5 == 1/2 stored it
    samples.write_text("".join(json.dumps(r) + "\n" for r in records))
    never_called = PlantedBackend(responses, fail_after_calls=0)
    assert _run(never_called, benchmark, tmp_path)["benchmarks"]["planted"]["greedy"]["accuracy"] == pytest.approx(40.0)
    results = _run(never_called, benchmark, tmp_path, regrade_stored=True)
    assert results["benchmarks"]["planted"]["greedy"]["accuracy"] == pytest.approx(PLANTED_ACCURACY)
    assert json.loads(samples.read_text().splitlines()[3])["scores"] == [1.0]


def test_resume_refuses_other_settings(benchmark, tmp_path):
    responses = {k: response for k, (_, response) in PLANTED.items()}
    scoring.evaluate_checkpoint("ckpt", PlantedBackend(responses), {"planted": benchmark}, tmp_path,
                                {"checkpoint": "a", "max_pixels": 1}, progress=False)
    with pytest.raises(ValueError, match="max_pixels"):
        scoring.evaluate_checkpoint("ckpt", PlantedBackend(responses), {"planted": benchmark}, tmp_path,
                                    {"checkpoint": "a", "max_pixels": 2}, progress=False)


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if the command gets as far as loading a model."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the mistake was reported")

    monkeypatch.setattr(evaluate_cli, "make_backend", refuse)


@pytest.fixture
def command_inputs(tmp_path):
    """Paths that pass the command's checks: a checkpoint folder and a benchmark file."""
    write_benchmark(tmp_path / "planted.parquet", {k: truth for k, (truth, _) in PLANTED.items()})
    pd.DataFrame({"question": ["1 + 1?"]}).to_parquet(tmp_path / "questions.parquet")
    actor = tmp_path / "global_step_1" / "actor"
    (actor / "huggingface").mkdir(parents=True)
    (actor / "huggingface" / "config.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("")
    (tmp_path / "notes.parquet").write_text("not a parquet file\n")
    no_processor = write_checkpoint_folder(tmp_path / "no_processor")
    (no_processor / "preprocessor_config.json").unlink()
    return {"tmp": tmp_path, "ckpt": write_checkpoint_folder(tmp_path / "ckpt"), "bench": tmp_path / "planted.parquet"}


@pytest.mark.parametrize("argv, expected", [
    (["--checkpoint", "{ckpt}"], "error: the following arguments are required: --out; see --help"),
    (["--out", "{tmp}/o", "--batch-size", "0"], "argument --batch-size: expected an integer >= 1, got '0'"),
    (["--out", "{tmp}/o", "--max-new-tokens", "-1"], "argument --max-new-tokens: expected an integer >= 0"),
    (["--out", "{tmp}/o", "--backend", "sglang"], "argument --backend: invalid choice: 'sglang'"),
    (["--out", "{tmp}/o", "--checkpoint", "{ckpt}"], "error: no --checkpoint or no --benchmark given; give at least"),
    (["--out", "{tmp}/notes.txt", "--checkpoint", "{ckpt}", "--benchmark", "{bench}"], "error: --out {tmp}/notes.txt is a file"),
    (["--out", "{tmp}/o", "--checkpoint", "{ckpt}", "--benchmark", "{bench}", "--min-pixels", "2000000"],
     "error: --min-pixels 2000000 is above --max-pixels 1000000; give --min-pixels at most --max-pixels"),
    (["--out", "{tmp}/o", "--checkpoint", "{tmp}/nowhere", "--benchmark", "{bench}"],
     "error: --checkpoint {tmp}/nowhere does not exist; pass a Hugging Face checkpoint folder"),
    (["--out", "{tmp}/o", "--checkpoint", "{tmp}/notes.txt", "--benchmark", "{bench}"],
     "error: --checkpoint {tmp}/notes.txt is a file"),
    (["--out", "{tmp}/o", "--checkpoint", "{tmp}/global_step_1/actor", "--benchmark", "{bench}"],
     "error: --checkpoint {tmp}/global_step_1/actor has no config.json; merge verl's actor shards"),
    (["--out", "{tmp}/o", "--checkpoint", "{tmp}/global_step_1/actor/huggingface", "--benchmark", "{bench}"],
     "error: --checkpoint {tmp}/global_step_1/actor/huggingface has config.json but no weights (*.safetensors)"),
    (["--out", "{tmp}/o", "--checkpoint", "a={ckpt}", "--checkpoint", "a={ckpt}", "--benchmark", "{bench}"],
     "error: --checkpoint label 'a' is given twice"),
    (["--out", "{tmp}/o", "--checkpoint", "{tmp}/no_processor", "--benchmark", "{bench}"],
     "error: --checkpoint {tmp}/no_processor has no preprocessor_config.json (the image processor); copy"),
    (["--out", "{tmp}/o", "--checkpoint", "{ckpt}", "--benchmark", "{tmp}/notes.parquet"],
     "error: {tmp}/notes.parquet is not a parquet file (ArrowInvalid: "),
    (["--out", "{tmp}/o", "--checkpoint", "{ckpt}", "--benchmark", "{tmp}/nowhere.parquet"],
     "error: --benchmark {tmp}/nowhere.parquet does not exist; pass a verl-format parquet"),
    (["--out", "{tmp}/o", "--checkpoint", "{ckpt}", "--benchmark", "{tmp}/questions.parquet"],
     "error: {tmp}/questions.parquet has no column 'prompt' (columns: ['question']); pass a verl-format parquet"),
    (["--out", "{tmp}/o", "--compare", "{tmp}/a", "{tmp}/b", "--checkpoint", "{ckpt}"],
     "error: --compare only tabulates finished results; it takes no --checkpoint or --benchmark"),
    (["--out", "{tmp}/o", "--compare", "{tmp}/a", "{tmp}/b"], "error: --compare {tmp}/a/results.json does not exist"),
])
def test_command_mistakes_are_one_line_before_any_model(command_inputs, no_model, capsys, argv, expected):
    line = usage_error(capsys, evaluate_cli.main, *[arg.format(**command_inputs) for arg in argv])
    assert line.startswith("python -m vgpo_verl.evaluate: ") and expected.format(**command_inputs) in line


def test_resume_under_other_flags_is_refused_before_any_model(command_inputs, no_model, benchmark, capsys):
    out = command_inputs["tmp"] / "o"
    flags = ["--out", out, "--checkpoint", f"run={command_inputs['ckpt']}", "--benchmark", command_inputs["bench"]]
    args = evaluate_cli.build_parser().parse_args([str(flag) for flag in flags])
    _run(PlantedBackend({k: r for k, (_, r) in PLANTED.items()}), benchmark, out, label="run",
         settings=evaluate_cli.protocol_settings(args, str(command_inputs["ckpt"])))
    line = usage_error(capsys, evaluate_cli.main, *flags, "--max-new-tokens", "64")
    assert f"error: {out / 'run'} was started with other settings (['max_new_tokens']:" in line
    assert line.endswith("; use a new --out directory to evaluate with these, or the earlier flags to resume")


def test_a_bug_is_not_a_usage_error(command_inputs, monkeypatch):
    def broken_backend(*args, **kwargs):
        raise RuntimeError("planted bug")

    monkeypatch.setattr(evaluate_cli, "make_backend", broken_backend)
    with pytest.raises(RuntimeError, match="planted bug"):
        evaluate_cli.main(["--out", str(command_inputs["tmp"] / "o"), "--checkpoint", str(command_inputs["ckpt"]),
                           "--benchmark", str(command_inputs["bench"])])


def test_the_real_entry_reports_a_mistake_in_one_line(command_inputs):
    line = module_usage_error("vgpo_verl.evaluate", "--out", command_inputs["tmp"] / "o", "--checkpoint",
                              command_inputs["ckpt"], "--benchmark", command_inputs["tmp"] / "nowhere.parquet")
    assert line.startswith("python -m vgpo_verl.evaluate: error: --benchmark ") and "does not exist" in line


def test_comparison_of_two_checkpoints(benchmark, tmp_path):
    good = PlantedBackend({k: f"\\boxed{{{truth}}}" for k, (truth, _) in PLANTED.items()})
    planted = PlantedBackend({k: response for k, (_, response) in PLANTED.items()})
    base = _run(planted, benchmark, tmp_path, label="dapo")
    better = _run(good, benchmark, tmp_path, label="vgpo")
    markdown = tables.write_comparison([base, better], tmp_path)
    assert "| planted | 60.00 | 100.00 | +40.00 |" in markdown
    table = json.loads((tmp_path / "comparison.json").read_text())
    assert table["modes"]["greedy"]["planted"]["delta vgpo"] == pytest.approx(40.0)
    assert table["modes"]["greedy"]["average"]["vgpo"] == pytest.approx(100.0)

    # The command-line form reads two finished result directories.
    assert evaluate_cli.main(["--compare", str(tmp_path / "dapo"), str(tmp_path / "vgpo"),
                              "--out", str(tmp_path / "cmp")]) == 0
    assert "+40.00" in (tmp_path / "cmp/comparison.md").read_text()


def test_backend_choice_is_explicit(monkeypatch):
    with pytest.raises(ValueError, match="--backend must be"):
        backends.make_backend("sglang", "/nonexistent")
    monkeypatch.setitem(sys.modules, "vllm", None)  # an environment where vllm does not import
    usable, why_not = backends.vllm_usable(cpu=False)
    assert not usable and "vllm does not import" in why_not


def test_protocol_defaults_are_the_papers():
    """Look-Back's eval/main.py defaults (max model length, pixels, --max-tokens 2048) and its scorer."""
    args = evaluate_cli.build_parser().parse_args(["--out", "x"])
    assert (args.max_model_len, args.min_pixels, args.max_pixels) == (8192, 262_144, 1_000_000)
    assert (args.max_new_tokens, args.grader) == (2048, "lookback")
    assert scoring.modes(None)["greedy"].temperature == 0.0
    settings = evaluate_cli.protocol_settings(args, "ckpt")
    assert (settings["max_new_tokens"], settings["grader"]) == (2048, "lookback")


def test_grader_and_budget_are_recorded_and_used(benchmark, tmp_path):
    """Default: Look-Back's scorer (a gold letter found inside the box counts) and 2048 new tokens."""
    responses = {k: "\\boxed{C. 12}" for k in PLANTED}

    class Recording(PlantedBackend):
        def generate(self, prompts, sampling):
            self.budget = sampling.max_new_tokens
            return super().generate(prompts, sampling)

    letters = [benchmarks.Prompt(p.sample_id, p.messages, p.image_sources, "C", p.data_source, p.extra_info)
               for p in benchmark]
    backend = Recording(responses)
    results = _run(backend, letters, tmp_path / "lookback")
    assert backend.budget == 2048
    assert results["settings"]["grader"] == "lookback" and results["settings"]["max_new_tokens"] == 2048
    assert results["benchmarks"]["planted"]["greedy"]["accuracy"] == pytest.approx(100.0)
    assert "grader lookback, max new tokens 2048" in (tmp_path / "lookback/ckpt/results.md").read_text()

    settings = {"checkpoint": "ckpt", "grader": "vgpo", "max_new_tokens": None}
    results = scoring.evaluate_checkpoint("ckpt", Recording(responses), {"planted": letters}, tmp_path / "vgpo",
                                          settings, progress=False)
    assert results["settings"]["grader"] == "vgpo"
    assert results["benchmarks"]["planted"]["greedy"]["accuracy"] == pytest.approx(0.0)  # mathruler: "C. 12" != "C"
    assert json.loads((tmp_path / "vgpo/ckpt/settings.json").read_text())["grader"] == "vgpo"


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    return build_tiny_setup(tmp_path_factory.mktemp("tiny"))


def test_end_to_end_on_the_tiny_model(tiny_setup, tmp_path):
    """The real transformers generation path feeds the grader; results and samples agree. Run as a user on a
    CPU machine would, without --cpu: vLLM has no CUDA device, so transformers generates, with the PIL image
    path (this install has no working torchvision; the fallback once died on `BaseVideoProcessor`)."""
    checkpoint, data = tiny_setup
    proc = run_module("vgpo_verl.evaluate", "--backend", "auto", "--checkpoint", f"tiny={checkpoint}",
                      "--benchmark", f"shapes={data}", "--out", str(tmp_path), "--max-new-tokens", "6",
                      "--batch-size", "2", *TINY_PIXELS)
    assert "vLLM is not used: no CUDA device" in proc.stderr and "Generating with transformers instead" in proc.stderr
    results = json.loads((tmp_path / "tiny/results.json").read_text())
    assert results["backend"] == "transformers"
    greedy = results["benchmarks"]["shapes"]["greedy"]
    records = [json.loads(line) for line in (tmp_path / "tiny/samples/shapes.greedy.jsonl").read_text().splitlines()]
    assert greedy["n"] == len(records) == 3 and greedy["generated_now"] == 3
    assert [r["ground_truth"] for r in records] == [p.ground_truth for p in benchmarks.load_benchmark(data)]
    assert greedy["accuracy"] == pytest.approx(100.0 * sum(r["accuracy"] for r in records) / 3)
    assert all(0 < r["response_tokens"][0] <= 6 for r in records)
    assert f"| shapes | 3 | {greedy['accuracy']:.2f} |" in (tmp_path / "tiny/results.md").read_text()


def test_benchmark_prepared_by_the_data_tool(tmp_path):
    """vgpo_verl.data's parquet -> load_benchmark -> grading with Look-Back's scorer, ids kept in the samples."""
    from _dataset_cards import write_wemath

    from vgpo_verl.data import cli as data_cli

    assert data_cli.main(["wemath", "--input", str(write_wemath(tmp_path / "We-Math")), "--out", str(tmp_path / "data")]) == 0
    prompts = benchmarks.load_benchmark(tmp_path / "data/wemath/testmini.parquet")
    assert [len(p.images) for p in prompts] == [1, 1] and [p.ground_truth for p in prompts] == ["B", "B"]
    responses = {prompts[0].sample_id: "<think>...</think> \\boxed{B. 24}",  # the gold letter inside the box
                 prompts[1].sample_id: "\\boxed{24}"}  # the option's text is not its letter
    results = _run(PlantedBackend(responses), prompts, tmp_path / "eval")
    assert results["benchmarks"]["planted"]["greedy"]["accuracy"] == pytest.approx(50.0)
    records = [json.loads(line) for line in (tmp_path / "eval/ckpt/samples/planted.greedy.jsonl").read_text().splitlines()]
    assert [(r["meta"]["ID"], r["meta"]["key"], r["scores"]) for r in records] == [
        ("3steps_10", "3steps_1", [1.0]), ("3steps_10", "3steps_multi", [0.0])]
