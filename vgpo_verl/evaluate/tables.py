"""The results as tables: one checkpoint's ``results.md``, and the comparison of several checkpoints."""

from __future__ import annotations

import json
import pathlib
from typing import Sequence

from vgpo_verl.cli import UsageError


def results_markdown(results: dict) -> str:
    mode_names = list(results["modes"])
    settings = results["settings"]
    lines = [f"Checkpoint `{results['checkpoint']}` (backend {results['backend']}, grader {settings['grader']}, "
             f"max new tokens {settings['max_new_tokens']}), accuracy in %", "",
             "| benchmark | n | " + " | ".join(mode_names) + " |",
             "|---|---:|" + "---:|" * len(mode_names)]
    for name, bench in results["benchmarks"].items():
        cells = " | ".join(f"{bench[m]['accuracy']:.2f}" for m in mode_names)
        lines.append(f"| {name} | {bench[mode_names[0]]['n']} | {cells} |")
    cells = " | ".join(f"{results['average'][m]:.2f}" for m in mode_names)
    lines.append(f"| **average** | | {cells} |")
    return "\n".join(lines) + "\n"


def compare(results: Sequence[dict]) -> tuple[dict, str]:
    """Side-by-side table of several results (same benchmarks and modes), with deltas to the first."""
    if len(results) < 2:
        raise ValueError("a comparison needs at least two results")
    labels = [r["label"] for r in results]
    base = results[0]
    table: dict[str, dict] = {}
    lines = ["Accuracy in %; delta = checkpoint - " + labels[0], ""]
    for mode in base["modes"]:
        header = ["benchmark", *labels, *[f"delta {label}" for label in labels[1:]]]
        lines += [f"### {mode}", "", "| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
        rows = [*base["benchmarks"], "average"]
        for bench in rows:
            values = []
            for result in results:
                if mode not in result["modes"] or (bench != "average" and bench not in result["benchmarks"]):
                    raise UsageError(f"result {result['label']!r} has no {mode} accuracy for {bench!r}",
                                     "compare results of the same benchmarks and modes")
                values.append(result["average"][mode] if bench == "average" else result["benchmarks"][bench][mode]["accuracy"])
            deltas = [v - values[0] for v in values[1:]]
            table.setdefault(mode, {})[bench] = {**dict(zip(labels, values)),
                                                **{f"delta {l}": d for l, d in zip(labels[1:], deltas)}}
            lines.append(f"| {bench} | " + " | ".join(f"{v:.2f}" for v in values) + " | "
                         + " | ".join(f"{d:+.2f}" for d in deltas) + " |")
        lines.append("")
    return {"labels": labels, "modes": table}, "\n".join(lines)


def write_comparison(results: Sequence[dict], out_dir: pathlib.Path) -> str:
    table, markdown = compare(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "comparison.json").write_text(json.dumps(table, indent=1))
    (out_dir / "comparison.md").write_text(markdown)
    return markdown
