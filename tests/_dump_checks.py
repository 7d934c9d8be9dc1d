"""Checks of a training run's dump (vgpo_verl.dump) shared by the demo's and the two-node run's tests.

- `load_dumps`: the per-step records, all steps present;
- `expected_vgpo_advantages`: verl's GRPO advantage, alpha and psi recomputed from a record;
- `similarity_errors`: the dumped similarity of some rows against a plain-transformers recomputation
  (one sequence at a time, in a child process with the CPU platform on).
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

# One sequence at a time from the dumped token ids and pixels: the checkpoint's last_hidden_state
# (post-norm, layer -1), cosine to the mean over <|image_pad|> positions, at the response positions.
# Prints the largest difference per row.
_RECOMPUTE = r"""
import json, sys, torch
import vgpo_verl.cpu; vgpo_verl.cpu.enable()
from transformers import AutoModelForImageTextToText
checkpoint, dump, rows = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
record = torch.load(dump, weights_only=False)
model = AutoModelForImageTextToText.from_pretrained(checkpoint, dtype=torch.float32).eval()
image_token = model.config.image_token_id
worst = []
for i in rows:
    ids = record["input_ids"][i][None]
    start = int(record["prompt_length"][i])
    n = ids.shape[1] - start
    assert bool(record["response_mask"][i, :n].all()) and int(record["response_mask"][i].sum()) == n
    with torch.no_grad():
        hidden = model.model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=record["pixel_values"][i],
                             image_grid_thw=record["image_grid_thw"][i],
                             mm_token_type_ids=(ids == image_token).int()).last_hidden_state[0]
    mu = hidden[ids[0] == image_token].mean(dim=0)
    expected = torch.nn.functional.cosine_similarity(hidden[start:], mu[None], dim=-1)
    worst.append((expected - record["similarity"][i, :n]).abs().max().item())
print(json.dumps(worst))
"""


def load_dumps(dump_dir: pathlib.Path, steps: int) -> list[dict]:
    """The records of steps 1..steps (asserting that exactly those files are there)."""
    import torch

    paths = sorted(pathlib.Path(dump_dir).glob("step_*.pt"))
    assert [p.name for p in paths] == [f"step_{s:06d}.pt" for s in range(1, steps + 1)], paths
    return [torch.load(p, weights_only=False) for p in paths]


def expected_vgpo_advantages(record: dict):
    """(grpo (B, T), psi (B, T), alpha (B,)): verl's GRPO advantage and VGPO's weights, recomputed
    with verl's and vgpo_verl.algorithm's own functions from the dumped rewards and scores."""
    import numpy as np
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    from vgpo_verl.algorithm import VGPOConfig, compute_vgpo_weights

    algorithm = record["algorithm"]
    uid = np.array(record["uid"], dtype=object)
    mask = record["response_mask"].float()
    grpo, _ = compute_grpo_outcome_advantage(
        record["token_level_rewards"], mask, uid, norm_adv_by_std_in_grpo=algorithm["norm_adv_by_std_in_grpo"]
    )
    psi, alpha = compute_vgpo_weights(record["similarity"], mask, uid, VGPOConfig.from_mapping(algorithm.get("vgpo")),
                                      record["has_visual"])
    return grpo, psi, alpha


def similarity_errors(checkpoint: pathlib.Path, dump: pathlib.Path, rows: list[int], workdir: pathlib.Path) -> list[float]:
    """Largest |dumped - recomputed| similarity of each row in `rows` of the dump file `dump`."""
    script = pathlib.Path(workdir) / "recompute_similarity.py"
    script.write_text(_RECOMPUTE)
    out = subprocess.run([sys.executable, str(script), str(checkpoint), str(dump), json.dumps(rows)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    worst = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(worst) == len(rows), worst
    return worst
