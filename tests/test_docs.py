"""Docs that cannot rot: README.md and docs/*.md are checked against the code they describe.

- every relative link resolves (to a file or folder of the repository; `#anchors` are not checked);
- every `python -m vgpo_verl.<module>` named there answers `--help`, and every `vgpo-*` console script
  named there is declared in setup.py and its function answers `--help`;
- every recipe named there (`--config-name X`, `examples/run_vgpo.sh X`, `<method>_qwen*`) exists;
- every `algorithm.<method>.<key>` named there is a real knob of that method's dataclass;
- every knob table (between `<!-- knobs:KEY -->` markers) equals the one generated from its dataclass.
"""

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vgpo_verl import knobs
from vgpo_verl.methods.vgpo import TRAINER_KEYS

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
ALLOWED_EXTRA_KEYS = {"vgpo": set(TRAINER_KEYS)}  # accepted by VGPOConfig.from_mapping, not knobs


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _all(pattern: str) -> set[tuple[Path, str]]:
    return {(doc, m.group(1)) for doc in DOCS for m in re.finditer(pattern, _text(doc))}


def test_every_relative_link_resolves():
    missing = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", _text(doc)):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a URL, or an anchor in the same page
            path = (doc.parent / target.split("#")[0]).resolve()
            if not path.exists():
                missing.append(f"{doc.relative_to(REPO)}: {target}")
    assert not missing, missing


def _console_scripts() -> dict[str, str]:
    """script name -> "module:function", as setup.py declares them."""
    return dict(re.findall(r'"(vgpo-[\w-]+)\s*=\s*([\w.]+:\w+)"', _text(REPO / "setup.py")))


_HELP_PROBE = """
import contextlib, io, json, runpy, sys, importlib
codes = {}
for target in sys.argv[1:]:
    sys.argv = [target, "--help"]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            if ":" in target:
                module, function = target.split(":")
                getattr(importlib.import_module(module), function)(["--help"])
            else:
                runpy.run_module(target, run_name="__main__", alter_sys=True)
        codes[target] = ["returned without exiting", out.getvalue()[:200]]
    except SystemExit as stop:
        codes[target] = [stop.code, out.getvalue()[:200]]
print("HELP-CODES " + json.dumps(codes))
"""


def test_every_module_and_console_script_named_answers_help():
    modules = {name for _, name in _all(r"python3? -m (vgpo_verl(?:\.\w+)*)")}
    scripts = {name for _, name in _all(r"(?<![\w-])(vgpo-[a-z][\w-]*)")} - {"vgpo-verl"}
    declared = _console_scripts()
    undeclared = sorted(scripts - set(declared))
    assert not undeclared, f"console scripts named in the docs but not declared in setup.py: {undeclared}"
    assert modules, "no `python -m vgpo_verl...` command found in the docs"
    targets = sorted(modules) + sorted(declared[s] for s in scripts)
    proc = subprocess.run([sys.executable, "-c", _HELP_PROBE, *targets], capture_output=True, text=True, timeout=600,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    line = [x for x in proc.stdout.splitlines() if x.startswith("HELP-CODES ")]
    assert line, proc.stdout[-2000:] + proc.stderr[-3000:]
    codes = json.loads(line[-1][len("HELP-CODES "):])
    failed = {t: c for t, c in codes.items() if c[0] not in (0, None) or "usage" not in c[1].lower()}
    assert not failed, failed


def test_every_recipe_named_exists():
    named = {name for _, name in _all(r"--config-name[ =](\w+)")}
    named |= {name for _, name in _all(r"run_vgpo\.(?:sh|slurm) (\w+)")}
    named |= {name for _, name in _all(r"\b((?:vgpo|dapo|entropy_shaping|vppo)_qwen\w+)\b")}
    named = {n for n in named if not n.endswith("_")}  # `vgpo_qwen2_5_vl_{7b,3b}`-style families
    missing = sorted(n for n in named if not (REPO / "recipes" / f"{n}.yaml").exists())
    assert named and not missing, missing


def test_every_algorithm_key_named_is_a_real_knob():
    wrong = []
    for doc, (method, key) in {(d, m) for d in DOCS
                               for m in re.findall(r"algorithm\.(vgpo|entropy_shaping|vppo)\.([a-z_]+)", _text(d))}:
        allowed = {f.name for f in dataclasses.fields(knobs.config_class(method))} | ALLOWED_EXTRA_KEYS.get(method, set())
        if key not in allowed:
            wrong.append(f"{doc.relative_to(REPO)}: algorithm.{method}.{key}")
    assert not wrong, wrong


def test_knob_tables_are_generated_from_the_dataclasses():
    found = {}
    for doc in DOCS:
        for key, table in knobs.tables_in(_text(doc)).items():
            assert table == knobs.markdown_table(key), (
                f"{doc.relative_to(REPO)}: the algorithm.{key} table differs from {knobs.CONFIG_CLASSES[key]}; "
                f"run `python -m vgpo_verl.knobs --update {doc.relative_to(REPO)}`")
            found[key] = doc
    assert set(found) == set(knobs.CONFIG_CLASSES), f"tables missing for {set(knobs.CONFIG_CLASSES) - set(found)}"


def test_knobs_update_rewrites_a_stale_table(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("intro\n<!-- knobs:entropy_shaping -->\n| stale |\n<!-- /knobs:entropy_shaping -->\nend\n")
    assert knobs.main(["--update", str(doc)]) == 0
    assert knobs.tables_in(doc.read_text()) == {"entropy_shaping": knobs.markdown_table("entropy_shaping")}
    assert doc.read_text().startswith("intro\n") and doc.read_text().endswith("end\n")
    with pytest.raises(SystemExit) as stop:
        knobs.main(["--update", str(tmp_path / "missing.md")])
    assert stop.value.code == 2
    unmarked = tmp_path / "unmarked.md"
    unmarked.write_text("a document without knob tables\n")
    with pytest.raises(SystemExit) as stop:
        knobs.main(["--update", str(unmarked)])
    assert stop.value.code == 2 and unmarked.read_text() == "a document without knob tables\n"


def test_the_readme_picture_is_drawn_by_the_training_code(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("overview", REPO / "docs" / "overview.py")
    overview = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(overview)
    out = overview.draw(tmp_path / "overview.png")
    assert out.stat().st_size > 10_000 and (REPO / "docs" / "vgpo_overview.png").exists()
