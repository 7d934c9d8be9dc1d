"""The README's picture: what VGPO does to one prompt group's advantages, drawn by the training code.

    python docs/overview.py            # writes docs/vgpo_overview.png

Four responses to one prompt (two right, two wrong) with synthetic visual similarities s_t that fade
along the response at different rates (visual forgetting); `compute_vgpo_weights_detailed` (the code
the `vgpo` estimator runs, published knobs) turns them into the token weight psi and the trajectory
weight alpha, and verl's GRPO advantage A becomes A * alpha * psi. Synthetic inputs, real weights.
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np
import torch

from vgpo_verl.methods.vgpo import VGPOConfig, compute_vgpo_weights_detailed

OUT = pathlib.Path(__file__).resolve().parent / "vgpo_overview.png"


def group_example(length: int = 60, seed: int = 0):
    """(similarity (4, T), rewards (4,), grpo advantage (4,)): fading focus, two right and two wrong."""
    gen = torch.Generator().manual_seed(seed)
    tau = torch.linspace(0, 1, length)
    fade = torch.tensor([0.1, 0.8, 0.2, 0.9])[:, None]  # how fast each response forgets the image
    similarity = 0.55 - fade * 0.35 * tau.sqrt() + 0.03 * torch.randn(4, length, generator=gen)
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0])
    grpo = (rewards - rewards.mean()) / (rewards.std() + 1e-6)
    return similarity, rewards, grpo


def draw(out: pathlib.Path = OUT) -> pathlib.Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    similarity, rewards, grpo = group_example()
    mask = torch.ones_like(similarity)
    weights = compute_vgpo_weights_detailed(similarity, mask, np.zeros(4), VGPOConfig())
    advantage = grpo[:, None] * weights.alpha[:, None] * weights.psi
    t = np.arange(similarity.shape[1])
    colors = ["tab:green", "tab:olive", "tab:red", "tab:purple"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for i in range(4):
        label = f"response {i + 1} ({'right' if rewards[i] else 'wrong'}, alpha {weights.alpha[i]:.2f})"
        axes[0].plot(t, similarity[i], color=colors[i], lw=1.2, label=label)
        axes[1].plot(t, weights.psi[i], color=colors[i], lw=1.2)
        gated = weights.gate[i].numpy()
        axes[1].scatter(t[gated], weights.psi[i].numpy()[gated], color=colors[i], s=14, zorder=3)
        axes[2].plot(t, advantage[i], color=colors[i], lw=1.2)
        axes[2].axhline(float(grpo[i]), color=colors[i], lw=0.8, ls="--")
    axes[0].set(title="similarity s_t = cos(h_t, image prototype)", xlabel="response token t")
    axes[1].set(title="token weight psi_t (dots: compensated late tokens)", xlabel="response token t")
    axes[2].set(title="A * alpha * psi_t (dashed: GRPO's A)", xlabel="response token t")
    axes[0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=OUT, help="where the PNG goes (default: %(default)s)")
    print(draw(parser.parse_args().out))
