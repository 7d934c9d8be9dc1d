"""Checks of a training run's dump (vgpo_verl.plugin.dump) shared by the demo's and the two-node run's tests.

- `load_dumps`: the per-step records, all steps present;
- `expected_vgpo_advantages`: verl's GRPO advantage, alpha and psi recomputed from a record;
- `probe_errors` / `similarity_errors`: what the dump holds of some rows (scores, log-probs)
  against a plain-transformers recomputation from a checkpoint (one sequence at a time, in a child
  process with the CPU platform on);
- `merged_actor`: a verl actor checkpoint (FSDP shards) as a Hugging Face model directory.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

# One sequence at a time from the dumped token ids and pixels, with a checkpoint's weights: what the
# actor computed in the old-log-prob pass, for every quantity the dump holds:
# - similarity: last_hidden_state (post-norm, layer -1), cosine to the mean over <|image_pad|> positions;
# - old_log_probs: the log-softmax of the logits at temperature 1 (the demo's) at the response tokens;
# - aug_log_probs: the log-probs with the image's patches blackened (vgpo_verl.methods.perturb) at the seed given.
# Prints {quantity: [largest difference per row]}.
_RECOMPUTE = r"""
import json, sys, torch
import vgpo_verl.cpu; vgpo_verl.cpu.enable()
from transformers import AutoModelForImageTextToText, AutoProcessor
from vgpo_verl.methods.perturb import blacken_patches
from vgpo_verl.methods.vppo import VPPOConfig
dump, rows, probes = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])  # probes: [[checkpoint, seed]]
record = torch.load(dump, weights_only=False)
dumped = {"similarity": record.get("similarity"), "old_log_probs": record.get("old_log_probs"),
          "aug_log_probs": record["estimator_inputs"].get("aug_log_probs")}
wanted = [q for q, value in dumped.items() if value is not None]
black_prob = VPPOConfig.from_mapping(record["algorithm"].get("vppo")).black_prob


def errors(checkpoint, seed):
    model = AutoModelForImageTextToText.from_pretrained(checkpoint, dtype=torch.float32).eval()
    image_token = model.config.image_token_id
    image = AutoProcessor.from_pretrained(checkpoint).image_processor if "aug_log_probs" in wanted else None

    def forward(ids, pixels, grid):
        with torch.no_grad():
            hidden = model.model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels,
                                 image_grid_thw=grid, mm_token_type_ids=(ids == image_token).int()).last_hidden_state[0]
            return hidden, model.lm_head(hidden).float()

    worst = {q: [] for q in wanted}
    for i in rows:
        ids = record["input_ids"][i][None]
        start = int(record["prompt_length"][i])
        n = ids.shape[1] - start
        assert bool(record["response_mask"][i, :n].all()) and int(record["response_mask"][i].sum()) == n
        pixels, grid = record["pixel_values"][i], record["image_grid_thw"][i]
        hidden, logits = forward(ids, pixels, grid)
        log_probs = torch.log_softmax(logits[start - 1:-1], -1)  # position t predicts token t + 1
        expected = {
            "similarity": torch.nn.functional.cosine_similarity(hidden[start:], hidden[ids[0] == image_token].mean(0)[None], dim=-1),
            "old_log_probs": log_probs.gather(-1, ids[0, start:, None])[:, 0],
        }
        if image is not None:
            black, _ = blacken_patches(pixels, grid, seed, black_prob, image.image_mean, image.image_std)
            _, aug_logits = forward(ids, black, grid)
            expected["aug_log_probs"] = torch.log_softmax(aug_logits[start - 1:-1], -1).gather(-1, ids[0, start:, None])[:, 0]
        for q in wanted:
            worst[q].append((expected[q] - dumped[q][i, :n]).abs().max().item())
    return worst


print(json.dumps([errors(checkpoint, seed) for checkpoint, seed in probes]))
"""


def load_dumps(dump_dir: pathlib.Path, steps: int, first: int = 1) -> list[dict]:
    """The records of steps first..steps (asserting that exactly those files are there)."""
    import torch

    paths = sorted(pathlib.Path(dump_dir).glob("step_*.pt"))
    assert [p.name for p in paths] == [f"step_{s:06d}.pt" for s in range(first, steps + 1)], paths
    return [torch.load(p, weights_only=False) for p in paths]


def expected_vgpo_advantages(record: dict):
    """(grpo (B, T), psi (B, T), alpha (B,)): verl's GRPO advantage and VGPO's weights, recomputed
    with verl's and vgpo_verl.methods.vgpo's own functions from the dumped rewards and scores."""
    import numpy as np
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    from vgpo_verl.methods.vgpo import VGPOConfig, compute_vgpo_weights

    algorithm = record["algorithm"]
    uid = np.array(record["uid"], dtype=object)
    mask = record["response_mask"].float()
    grpo, _ = compute_grpo_outcome_advantage(
        record["token_level_rewards"], mask, uid, norm_adv_by_std_in_grpo=algorithm["norm_adv_by_std_in_grpo"]
    )
    psi, alpha = compute_vgpo_weights(record["similarity"], mask, uid, VGPOConfig.from_mapping(algorithm.get("vgpo")),
                                      record["has_visual"])
    return grpo, psi, alpha


def probe_errors(dump: pathlib.Path, rows: list[int], workdir: pathlib.Path,
                 probes: list[tuple[pathlib.Path, int]]) -> list[dict[str, list[float]]]:
    """For each (checkpoint, perturbation seed) of `probes`: {quantity: largest |dumped - recomputed| of
    each row in `rows`} of the dump file `dump`, recomputed with that checkpoint's weights, for each of
    similarity, old_log_probs, aug_log_probs (patches blackened at the seed) the dump holds."""
    script = pathlib.Path(workdir) / "recompute_from_dump.py"
    script.write_text(_RECOMPUTE)
    out = subprocess.run([sys.executable, str(script), str(dump), json.dumps(rows),
                          json.dumps([[str(checkpoint), seed] for checkpoint, seed in probes])],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(results) == len(probes) and all(len(e) == len(rows) for r in results for e in r.values()), results
    return results


def similarity_errors(checkpoint: pathlib.Path, dump: pathlib.Path, rows: list[int], workdir: pathlib.Path) -> list[float]:
    """Largest |dumped - recomputed| similarity of each row in `rows` of the dump file `dump`."""
    (errors,) = probe_errors(dump, rows, workdir, [(checkpoint, 0)])
    return errors["similarity"]


def merged_actor(actor_dir: pathlib.Path, out_dir: pathlib.Path) -> pathlib.Path:
    """A verl FSDP actor checkpoint (every rank's model shard, `actor/huggingface` for the config and
    processor) as an fp32 Hugging Face model directory. (verl.model_merger writes bf16: too coarse to
    compare log-probs.) Shards are joined as verl.model_merger joins them: in rank order along each
    DTensor's sharded dimension."""
    import shutil

    import torch
    from torch.distributed.tensor import DTensor
    from transformers import AutoConfig, AutoModelForImageTextToText

    actor_dir, out_dir = pathlib.Path(actor_dir), pathlib.Path(out_dir)
    shards = sorted(actor_dir.glob("model_world_size_*_rank_*.pt"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    states = [torch.load(p, map_location="cpu", weights_only=False) for p in shards]
    merged = {}
    for key, first in states[0].items():
        if isinstance(first, DTensor):
            (placement,) = first.placements
            merged[key] = (torch.cat([state[key]._local_tensor for state in states], dim=placement.dim)
                           if placement.is_shard() else first._local_tensor)
        else:
            merged[key] = first
    hf = actor_dir / "huggingface"
    model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(hf), dtype=torch.float32)
    missing, unexpected = model.load_state_dict(merged, strict=False)
    tied = {"lm_head.weight"} if model.config.get_text_config().tie_word_embeddings else set()
    assert set(missing) <= tied and not unexpected, (missing, unexpected)
    model.save_pretrained(out_dir)
    for item in hf.iterdir():
        if not (out_dir / item.name).exists():
            shutil.copy(item, out_dir / item.name)
    return out_dir


def optimizer_steps(actor_dir: pathlib.Path) -> set[int]:
    """The Adam step counts in a verl actor checkpoint's optimizer state (every parameter, rank 0)."""
    import torch

    (path,) = pathlib.Path(actor_dir).glob("optim_world_size_*_rank_0.pt")
    state = torch.load(path, map_location="cpu", weights_only=False)["state"]
    return {int(entry["step"]) for entry in state.values()}
