"""Generate, grade and store: every sample a JSONL line as soon as it is graded, resumed from there.

``evaluate_checkpoint`` runs every benchmark and mode for one checkpoint; ``evaluate_benchmark`` one
benchmark in one mode (greedy, avg@K), appending to ``samples/<benchmark>.<mode>.jsonl`` what it
grades (``grade``: ``vgpo_verl.data.grading``). A run directory resumes only under the settings it
was started with (``check_resume``); ``regrade`` grades the stored responses again without generating.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
from typing import Sequence

from vgpo_verl.cli import UsageError
from vgpo_verl.evaluate.backends import GenerationBackend, Sampling
from vgpo_verl.evaluate.benchmarks import Prompt
from vgpo_verl.evaluate.protocol import AVG_K_TEMPERATURE, PAPER_GRADER, PAPER_MAX_NEW_TOKENS
from vgpo_verl.evaluate.tables import results_markdown

logger = logging.getLogger("vgpo_verl.evaluate")


def grade(prompt: Prompt, responses: Sequence[str], response_tokens: Sequence[int], grader: str) -> dict:
    """One JSONL record: every response of the sample, its boxed answer and its score by ``grader``.

    ``meta`` carries the benchmark's own ids (WeMath's ``ID`` and ``key`` for its 4-dimensional score,
    MathVerse's ``problem_version``, ...) as ``vgpo_verl.data`` stored them.
    """
    from vgpo_verl.data.grading import boxed_answer, score

    scores = [score(text, prompt.ground_truth, grader) for text in responses]
    meta = prompt.extra_info.get("meta")
    return {
        "sample_id": prompt.sample_id,
        "ground_truth": prompt.ground_truth,
        "meta": json.loads(meta) if meta else {},
        "predictions": [boxed_answer(text) for text in responses],
        "scores": scores,
        "accuracy": sum(scores) / len(scores),
        "response_tokens": list(response_tokens),
        "responses": list(responses),
    }


def regrade(prompts: Sequence[Prompt], samples_path: pathlib.Path, grader: str) -> int:
    """Grades the stored responses again (after a grader fix) without generating; returns how many changed."""
    finished = read_finished(samples_path)
    by_id = {p.sample_id: p for p in prompts}
    records = [grade(by_id[sid], r["responses"], r["response_tokens"], grader) if sid in by_id else r
               for sid, r in finished.items()]
    changed = sum(new["scores"] != old["scores"] for new, old in zip(records, finished.values()))
    samples_path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return changed


def read_finished(path: pathlib.Path) -> dict[str, dict]:
    """Records already graded in a samples file.

    Records are written one line at a time, so an interruption can only cut the last line: that line
    is dropped (logged) and the file rewritten without it, and its sample is generated again.
    """
    if not path.exists():
        return {}
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    if text and not text.endswith("\n"):
        logger.warning("%s: the last line was cut by an interruption; that sample is redone", path)
        lines = lines[:-1]
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    finished: dict[str, dict] = {}
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} line {number} is not JSON ({error}); delete the file to redo that benchmark")
        finished[record["sample_id"]] = record
    return finished


def modes(avg_k: int | None) -> dict[str, Sampling]:
    """Evaluation modes: always greedy; avg@K when asked."""
    out = {"greedy": Sampling(temperature=0.0, n=1)}
    if avg_k:
        out[f"avg@{avg_k}"] = Sampling(temperature=AVG_K_TEMPERATURE, n=avg_k)
    return out


def evaluate_benchmark(backend: GenerationBackend, prompts: Sequence[Prompt], samples_path: pathlib.Path,
                       sampling: Sampling, grader: str = PAPER_GRADER, chunk_size: int = 32,
                       progress: bool = True) -> dict:
    """Generates and grades the prompts not yet in ``samples_path``; returns accuracy over all of them."""
    from tqdm import tqdm

    samples_path.parent.mkdir(parents=True, exist_ok=True)
    finished = read_finished(samples_path)
    wanted = {p.sample_id for p in prompts}
    stray = sorted(set(finished) - wanted)
    if stray:
        raise UsageError(f"{samples_path} holds samples {stray[:5]} that are not in the benchmark (another "
                         "benchmark file or --max-samples?)", "use a new --out directory")
    todo = [p for p in prompts if p.sample_id not in finished]
    if finished:
        logger.info("%s: resuming, %d of %d samples already graded", samples_path.name, len(finished), len(prompts))
    with samples_path.open("a", encoding="utf-8") as sink, \
            tqdm(total=len(prompts), initial=len(finished), desc=samples_path.stem, disable=not progress) as bar:
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start:start + chunk_size]
            for prompt, completions in zip(chunk, backend.generate(chunk, sampling), strict=True):
                if len(completions) != sampling.n:
                    raise RuntimeError(f"sample {prompt.sample_id}: backend returned {len(completions)} "
                                       f"completions, expected {sampling.n}")
                record = grade(prompt, [c.text for c in completions], [len(c.token_ids) for c in completions], grader)
                finished[prompt.sample_id] = record
                sink.write(json.dumps(record) + "\n")
            sink.flush()
            bar.update(len(chunk))
    accuracy = sum(finished[p.sample_id]["accuracy"] for p in prompts) / max(len(prompts), 1)
    return {"n": len(prompts), "accuracy": 100.0 * accuracy, "generated_now": len(todo)}


def check_resume(run_dir: pathlib.Path, settings: dict) -> None:
    """A run directory resumes only under the settings it was started with (its samples depend on them)."""
    settings_path = run_dir / "settings.json"
    if settings_path.exists():
        previous = json.loads(settings_path.read_text())
        if previous != settings:
            changed = sorted(k for k in settings if previous.get(k) != settings[k])
            raise UsageError(f"{run_dir} was started with other settings ({changed}: {previous} vs {settings})",
                             "use a new --out directory to evaluate with these, or the earlier flags to resume")


def evaluate_checkpoint(label: str, backend: GenerationBackend, benchmarks: dict[str, list[Prompt]],
                        out_dir: pathlib.Path, settings: dict, avg_k: int | None = None, chunk_size: int = 32,
                        progress: bool = True, regrade_stored: bool = False) -> dict:
    """Runs every benchmark and mode for one checkpoint; writes results.{json,md}; returns the results.

    ``settings`` (the command's ``cli.protocol_settings``) holds what the samples depend on; its ``grader`` (default
    "lookback") and ``max_new_tokens`` (default 2048, None: up to the model length) are used here.
    regrade_stored: grade the responses already stored again first (they are not generated again).
    """
    settings = {"grader": PAPER_GRADER, "max_new_tokens": PAPER_MAX_NEW_TOKENS, **settings}
    grader, max_new_tokens = settings["grader"], settings["max_new_tokens"]
    run_dir = out_dir / label
    check_resume(run_dir, settings)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "settings.json").write_text(json.dumps(settings, indent=1))

    results = {"label": label, "checkpoint": settings["checkpoint"], "backend": backend.name,
               "settings": settings, "modes": {}, "benchmarks": {}, "average": {}}
    for mode, sampling in modes(avg_k).items():
        sampling = dataclasses.replace(sampling, max_new_tokens=max_new_tokens)
        results["modes"][mode] = dataclasses.asdict(sampling)
        for bench, prompts in benchmarks.items():
            samples_path = run_dir / "samples" / f"{bench}.{mode}.jsonl"
            if regrade_stored and samples_path.exists():
                logger.info("%s: %d stored samples changed score on regrading", samples_path.name,
                            regrade(prompts, samples_path, grader))
            outcome = evaluate_benchmark(backend, prompts, samples_path, sampling, grader=grader,
                                         chunk_size=chunk_size, progress=progress)
            results["benchmarks"].setdefault(bench, {})[mode] = outcome
        results["average"][mode] = sum(b[mode]["accuracy"] for b in results["benchmarks"].values()) / len(benchmarks)
    (run_dir / "results.json").write_text(json.dumps(results, indent=1))
    (run_dir / "results.md").write_text(results_markdown(results))
    return results
