"""The paper's evaluation protocol: score checkpoints on benchmarks the way the VGPO paper did.

`python -m vgpo_verl.evaluate` (`vgpo-evaluate`) is the command line; its usage is in ``cli``. Modules,
each importing only those above it:

- ``protocol``: the paper's settings (model length, token budget, pixel range, grader, avg@K temperature);
- ``benchmarks``: verl-format parquet files into ``Prompt``s, images decoded when a batch needs them;
- ``backends``: ``GenerationBackend`` and its two kinds, vLLM and transformers ``generate``, and ``make_backend``;
- ``tables``: one checkpoint's ``results.md`` and the comparison of several checkpoints;
- ``scoring``: generate, grade and store each sample, resume, ``evaluate_checkpoint``;
- ``checks``: the command-line checks (checkpoint folders, labels, pixels) that ``vgpo_verl.analyze`` shares;
- ``cli``: the command (``build_parser``, ``main``).

May import: vgpo_verl.cli, vgpo_verl.data (graders), vgpo_verl.cpu, transformers, vllm; never
vgpo_verl.plugin's trainer glue.
"""


def main(argv=None) -> int:
    """The `vgpo-evaluate` console script (setup.py), kept at this name across the re-layout so installed
    scripts keep working; the command itself is vgpo_verl.evaluate.cli (imported on call: this package stays light)."""
    from vgpo_verl.evaluate.cli import main as command

    return command(argv)
