"""A run's metrics, step by step, from what verl's loggers leave on disk.

Two sources:
- verl's `file` logger (`VERL_FILE_LOGGER_PATH`, the demo's `metrics.jsonl`): one JSON line per
  `Tracking.log` call, `{"step": int, "data": {key: value}}`;
- a W&B offline run (`wandb/offline-run-*/`, holding `run-<id>.wandb`): W&B's transaction log, a
  LevelDB-style log of protobuf `Record`s (wandb.proto.wandb_internal_pb2), read here record by record
  because wandb 0.31 ships no reader for it. Its `history` records are the `wandb.log` calls.
Both give {step: {key: number}} (several calls for one step merged; media, tables and W&B's own
`_step`/`_runtime`/`_timestamp` left out).
"""

from __future__ import annotations

import json
import pathlib
import struct
import zlib

from vgpo_verl.cli import UsageError

Metrics = dict[int, dict[str, float]]

WANDB_MAGIC = b":W&B"
WANDB_HEADER = struct.Struct("<4sHB")  # ":W&B", 0xBEE1, version
RECORD_HEADER = struct.Struct("<IHB")  # crc32 of (type byte + payload), payload length, type
BLOCK_BYTES = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
WHAT_TO_PASS = ("pass verl's file-logger output (a .jsonl of {\"step\", \"data\"} lines, e.g. the demo's "
                "metrics.jsonl), a W&B offline run folder (wandb/offline-run-*), or a demo run folder")


def read_run(path: pathlib.Path) -> tuple[Metrics, pathlib.Path]:
    """(metrics by step, the file they came from) of RUN: a .jsonl file, a .wandb file, a W&B run folder,
    or a folder holding metrics.jsonl (a demo run). UsageError when it is none of these or unreadable."""
    path = pathlib.Path(path).expanduser()
    if not path.exists():
        raise UsageError(f"RUN {path} does not exist", WHAT_TO_PASS)
    if path.is_dir():
        found = (sorted(path.glob("run-*.wandb")) or sorted(path.glob("metrics.jsonl"))
                 or sorted(path.glob("offline-run-*/run-*.wandb"))[-1:])  # W&B's folder: its newest run
        if not found:
            raise UsageError(f"RUN {path} holds neither a W&B run file (run-*.wandb) nor metrics.jsonl",
                             WHAT_TO_PASS)
        path = found[0]
    if path.suffix == ".wandb":
        metrics = read_wandb_run(path)
    else:
        metrics = read_file_logger(path)
    if not metrics:
        raise UsageError(f"RUN {path} holds no logged step", "pass the log of a run that trained at least one step")
    return metrics, path


def read_file_logger(path: pathlib.Path) -> Metrics:
    """{step: metrics} of verl's file logger output; UsageError naming the first line that is not one."""
    metrics: Metrics = {}
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise UsageError(f"RUN {path} is not text, so not verl's file-logger output", WHAT_TO_PASS) from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step, data = record["step"], record["data"]
            if not isinstance(data, dict) or isinstance(step, bool) or not isinstance(step, int):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise UsageError(f"RUN {path}, line {number}: not a line of verl's file logger "
                             "({\"step\": N, \"data\": {...}})", WHAT_TO_PASS) from None
        metrics.setdefault(step, {}).update(_numbers(data.items()))
    return metrics


def read_wandb_run(path: pathlib.Path) -> Metrics:
    """{step: metrics} of a W&B transaction log (`run-<id>.wandb`); a torn last record (a killed run) ends
    the read, a file that is not one is a UsageError."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    if len(data) < WANDB_HEADER.size or WANDB_HEADER.unpack_from(data)[0] != WANDB_MAGIC:
        raise UsageError(f"RUN {path} is not a W&B run file (no :W&B header)", WHAT_TO_PASS)
    metrics: Metrics = {}
    for payload in _log_records(data, WANDB_HEADER.size):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") != "history":
            continue
        items = []
        for item in record.history.item:
            key = item.key or "/".join(item.nested_key)
            if len(item.nested_key) <= 1 and not key.startswith("_"):
                items.append((key, json.loads(item.value_json)))
        metrics.setdefault(int(record.history.step.num), {}).update(_numbers(items))
    return metrics


def _log_records(data: bytes, start: int):
    """Payloads of the LevelDB-style log after `start`: 32 KiB blocks of (header, chunk); a chunk with a
    bad checksum or cut short ends the log (what a killed writer leaves)."""
    position, pending = start, b""
    while position + RECORD_HEADER.size <= len(data):
        room = BLOCK_BYTES - position % BLOCK_BYTES
        if room < RECORD_HEADER.size:  # a block's tail too short for a header is padding
            position += room
            continue
        crc, length, kind = RECORD_HEADER.unpack_from(data, position)
        chunk = data[position + RECORD_HEADER.size: position + RECORD_HEADER.size + length]
        if len(chunk) < length or zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc:
            return
        position += RECORD_HEADER.size + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""


def _numbers(items) -> dict[str, float]:
    """The numbers among (key, value) pairs; booleans, strings, media and tables left out."""
    return {str(k): float(v) for k, v in items if isinstance(v, (int, float)) and not isinstance(v, bool)}
