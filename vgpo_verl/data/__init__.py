"""The paper's training and evaluation data, converted to verl's RL parquet format, and the graders.

`python -m vgpo_verl.data` (`vgpo-data`) is the converter's command line; its usage is in ``cli``.
Modules, each importing only those above it:

- ``datasets``: the datasets (``DatasetSpec``, ``DATASETS``), their prompt templates and pixel bounds;
- ``sources``: the rows of one split from a local file or folder (``read_rows``) or the hub (``read_hub``);
- ``rows``: one input row -> one verl row (``convert_row``), or a ``BadRowError`` saying why not;
- ``writer``: one split -> its parquet file and bad-rows list (``convert``);
- ``cli``: the command (``main``);
- ``grading``: the answer graders of the paper's protocol (imports none of the above).

May import: the standard library, pyarrow, PIL, datasets, mathruler and math-verify, and vgpo_verl.cli;
nothing of verl.
"""


def main(argv=None) -> int:
    """The `vgpo-data` console script (setup.py), kept at this name across the re-layout so installed
    scripts keep working; the command itself is vgpo_verl.data.cli (imported on call: this package stays light)."""
    from vgpo_verl.data.cli import main as command

    return command(argv)
