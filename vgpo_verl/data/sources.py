"""Reading the input: the rows of one split from a local file or folder, or from the hub.

A local directory or file (parquet, json/jsonl, or a ``datasets.save_to_disk`` folder; a hub snapshot
works: exactly one source is picked for the split, see ``split_files``), since training machines often
have no hub access; or the hub with ``datasets``. Rows come as read: images stay undecoded (raw bytes
or paths; ``vgpo_verl.data.rows`` reads and checks them).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq

from vgpo_verl import cli
from vgpo_verl.cli import UsageError

INPUT_KINDS = "a parquet/json/jsonl file, a folder of them or a save_to_disk folder"


def read_rows(source: str | Path, split: str, batch_size: int = 256, config: str | None = None) -> Iterator[dict]:
    """Rows of `split` from a local file or directory, images left undecoded (raw bytes / paths).

    A source or split that is not there raises UsageError now, not when the first row is read.
    """
    source = cli.existing_path("--input", source, f"pass {INPUT_KINDS}", kind="any")
    if source.is_dir() and ((source / "dataset_info.json").exists() or (source / "dataset_dict.json").exists()):
        return _read_saved_dataset(source, split, batch_size)
    if source.is_file() and source.suffix not in (".parquet", ".json", ".jsonl"):
        raise UsageError(f"--input {source} is not a parquet, json or jsonl file", f"pass {INPUT_KINDS}")
    return _read_files([source] if source.is_file() else split_files(source, split, config), batch_size)


def _read_files(files: list[Path], batch_size: int) -> Iterator[dict]:
    for path in files:
        if path.suffix == ".parquet":
            for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
                yield from batch.to_pylist()
        else:
            yield from _read_json(path)


def split_files(directory: Path, split: str, config: str | None = None) -> list[Path]:
    """The files of ONE source for `split` under a folder (a hub snapshot or a local copy).

    A file belongs to the split when its name is the split (`testmini.json`), a shard of it
    (`testmini-00000-of-00001.parquet`), or it sits in a folder named after it (`testmini/...`):
    `annot_testmini.json` (MathVista) and `testmini_text_only.parquet` (MathVerse) are not the split.
    When parquet and json both hold it (MathVerse's testmini.json and testmini.parquet), parquet alone
    is read. A snapshot with one folder per config (MMMU-Pro) is narrowed to the `config` folder;
    files of one split in several folders are refused rather than mixed.
    """
    if config and (directory / config).is_dir():
        directory = directory / config
    candidates = sorted(
        p for p in directory.rglob("*") if p.is_file() and p.suffix in (".parquet", ".json", ".jsonl")
        and not p.name.endswith(".bad_rows.jsonl")
    )
    matching = [
        p for p in candidates
        if p.stem == split or p.stem.startswith(f"{split}-") or split in p.relative_to(directory).parts[:-1]
    ]
    if not matching and len(candidates) == 1 and _split_names(candidates[0].relative_to(directory)) <= {split}:
        matching = candidates  # a release with one data file under another name (TIGER-Lab's 39Krelease.parquet)
    if not matching:
        found = [str(p.relative_to(directory)) for p in candidates][:10]
        raise UsageError(f"--input {directory} has no file for split {split!r} (found: {found})",
                         "name the split those files hold with --split, or pass the file itself as --input")
    if any(p.suffix == ".parquet" for p in matching):
        matching = [p for p in matching if p.suffix == ".parquet"]
    folders = sorted({str(p.parent.relative_to(directory)) for p in matching})
    if len(folders) > 1:
        raise UsageError(
            f"--input {directory} holds split {split!r} in several folders ({folders}), different configs or "
            "copies of the data", "pass --input <one of them>, or --hf-config <folder>"
        )
    return matching


# Split names a data file or folder can carry; a lone file named after one of them is that split only.
SPLIT_NAMES = ("train", "test", "testmini", "validation", "val", "dev")


def _split_names(relative: Path) -> set[str]:
    """The split names a file's path carries as words (`geo3k_test.parquet`, `test-00000-of-00001`, `val/x`)."""
    words = {word for part in (relative.stem, *relative.parts[:-1]) for word in re.split(r"[-_.\s]+", part)}
    return words & set(SPLIT_NAMES)


def _read_json(path: Path) -> Iterator[dict]:
    """Rows of a json(l) file: a list of rows, {"data": [rows]}, or {id: row} (MathVista's annot_testmini.json)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        for line in text.splitlines():
            if line.strip():
                yield json.loads(line)
        return
    data = json.loads(text)
    if isinstance(data, list):
        yield from data
    elif isinstance(data, dict) and isinstance(data.get("data"), list):
        yield from data["data"]
    elif isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        yield from data.values()
    else:
        raise UsageError(f"--input {path} is not a json of rows",
                         "pass a json list of rows, {'data': [rows]} or {id: row}, or a jsonl file")


def _read_saved_dataset(directory: Path, split: str, batch_size: int) -> Iterator[dict]:
    import datasets

    loaded = datasets.load_from_disk(str(directory))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise UsageError(f"--input {directory} has no split {split!r}", f"pass --split one of {list(loaded)}")
        loaded = loaded[split]
    return _undecoded_rows(loaded, batch_size)


def _undecoded_rows(dataset, batch_size: int) -> Iterator[dict]:
    """Rows of a `datasets.Dataset` in arrow form: images stay {"bytes", "path"} structs (original
    bytes, no decode), and any row selection the dataset carries (an indices mapping) is honoured."""
    for batch in dataset.with_format("arrow").iter(batch_size=batch_size):
        yield from batch.to_pylist()


HUB_FIX = ("where the hub is reachable, save the dataset (`datasets.load_dataset(NAME).save_to_disk(DIR)`, or "
           "`hf download NAME --repo-type dataset --local-dir DIR`), copy DIR here and pass --input DIR")


def read_hub(hf_name: str, hf_config: str | None, split: str, batch_size: int = 256) -> Iterator[dict]:
    """Rows from the hub (needs network access); images undecoded like the local path.

    The dataset is loaded now, not when the first row is read: a hub that cannot be reached, or a dataset
    or split it does not have, is a UsageError before anything is written."""
    import datasets

    if not (Path(hf_name).expanduser().is_dir() or _hub_offline()):
        _reach_hub(hf_name)
    try:
        # its splits first: an unknown one is named before anything is downloaded or generated
        builder = datasets.load_dataset_builder(hf_name, hf_config)
        splits = sorted(builder.config.data_files or builder.info.splits or {})
        if splits and split not in splits:
            raise UsageError(f"--split {split!r}: {hf_name} (config {hf_config}) has no such split",
                             f"pass one of its splits with --split: {splits}")
        builder.download_and_prepare()  # what load_dataset does next, on the builder already resolved
        dataset = builder.as_dataset(split=split)
    except UsageError:
        raise
    except (OSError, ValueError) as error:  # ConnectionError, DatasetNotFoundError, a config it does not have
        raise UsageError(f"cannot load {hf_name} (config {hf_config}, split {split!r}) from the hub "
                         f"({type(error).__name__}: {error})", HUB_FIX) from error
    return _undecoded_rows(dataset, batch_size)


HUB_PROBE_TIMEOUT_S = 10


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _reach_hub(hf_name: str) -> None:
    """One quick request for the dataset's card before `datasets` starts: without network, `datasets`
    retries for half a minute and logs every try; this fails in about a second, in one line."""
    import httpx
    import huggingface_hub

    try:
        huggingface_hub.HfApi().dataset_info(hf_name, timeout=HUB_PROBE_TIMEOUT_S)
    except (OSError, httpx.HTTPError, huggingface_hub.errors.HfHubHTTPError) as error:
        raise UsageError(f"cannot reach {hf_name} on the hub ({type(error).__name__}: {error})", HUB_FIX) from error
