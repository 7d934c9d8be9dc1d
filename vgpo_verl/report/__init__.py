"""A run on one page: `python -m vgpo_verl.report RUN [--out PAGE.png]`.

RUN is what verl's loggers left: the `file` logger's jsonl (the demo's `metrics.jsonl`), a W&B offline
run folder (`wandb/offline-run-*`), or a demo run folder. The page (``page``): reward and validation
accuracy, the visual focus by response position over steps (the forgetting curve as a heatmap), the
ranges of psi and alpha, the gate pass rate, and our code's share of each step. Modules: ``runs`` (the
readers), ``page`` (the picture), ``__main__`` (the command).

May import: vgpo_verl.cli, vgpo_verl.methods and vgpo_verl.plugin (their metric keys), matplotlib, wandb (its
protobuf records).
"""

from __future__ import annotations

import pathlib

PAGE_NAME = "report.png"


def report(run: pathlib.Path, out: pathlib.Path | None = None) -> pathlib.Path:
    """Read RUN, write its page (default: report.png next to the log read); returns the PNG's path.
    vgpo_verl.cli.UsageError for a RUN or an --out that is wrong."""
    from vgpo_verl.cli import UsageError
    from vgpo_verl.report.page import write_page
    from vgpo_verl.report.runs import read_run

    metrics, source = read_run(run)
    out = (source.parent / PAGE_NAME) if out is None else pathlib.Path(out).expanduser()
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder", f"pass a file name, e.g. {out / PAGE_NAME}")
    if out.suffix.lower() != ".png":
        raise UsageError(f"--out {out} does not end in .png", "the page is a PNG: name it *.png")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: folder {out.parent} does not exist", "create it first")
    steps = sorted(metrics)
    return write_page(metrics, out, f"{source}  (steps {steps[0]}..{steps[-1]})")
