"""TransferQueue bytes per training step spent on VGPO's two score fields, before and after issue 12.

The scoring engine writes two nested full-sequence float32 fields per sample to the TransferQueue
(`vgpo_visual_score`, `vgpo_has_visual`: prompt + response tokens each, see vgpo_verl/engine.py).
verl's workers fetch every field listed in the batch meta they receive, so before issue 12 the
reference pass (when the run has one) and the actor update fetched both fields again; now the
trainer wiring takes them out of that list (vgpo_verl/trainer_wiring.py, `_without_score_fields`)
and only the driver reads them, once, to compute the advantages.

Shapes come from a recipe (default recipes/vgpo_qwen2_5_vl_7b.yaml, composed by Hydra like
main_ppo does): rollout batch x n samples, prompt and response at their maximum lengths unless
--prompt-tokens / --response-tokens give typical ones. Byte counts are the nbytes of tensors built
with the engine's layout (nested jagged float32), for 64 samples, scaled to the batch.

    python benchmarks/bench_transfer.py [--recipe vgpo_qwen2_5_vl_7b] [--prompt-tokens P] [--response-tokens R]
"""

import argparse
import pathlib

import torch

SAMPLES = 64  # tensors built for this many samples; bytes scale linearly with the batch


def nested_nbytes(lengths: list[int]) -> int:
    """Bytes of one nested float32 field (values + int64 offsets), as the engine writes it."""
    values = torch.zeros(sum(lengths), dtype=torch.float32)
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int64)
    nested = torch.nested.nested_tensor_from_jagged(values, offsets)
    return nested.values().nbytes + nested.offsets().nbytes


def compose(recipe: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    recipes = pathlib.Path(__file__).resolve().parents[1] / "recipes"
    with initialize_config_dir(config_dir=str(recipes), version_base=None):
        return hydra_compose(config_name=recipe)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="vgpo_qwen2_5_vl_7b")
    parser.add_argument("--prompt-tokens", type=int, default=None, help="default: data.max_prompt_length")
    parser.add_argument("--response-tokens", type=int, default=None, help="default: data.max_response_length")
    args = parser.parse_args()

    from verl.trainer.ppo.utils import need_reference_policy

    config = compose(args.recipe)
    prompts, n = int(config.data.train_batch_size), int(config.actor_rollout_ref.rollout.n)
    prompt = args.prompt_tokens or int(config.data.max_prompt_length)
    response = args.response_tokens or int(config.data.max_response_length)
    batch = prompts * n
    has_ref = bool(need_reference_policy(config))

    per_field = nested_nbytes([prompt + response] * SAMPLES) * batch / SAMPLES  # one full-sequence field
    stored = 2 * per_field  # vgpo_visual_score + vgpo_has_visual

    # Who moves the two fields in one v1 step: the scoring worker writes them; then readers.
    before = {"old-log-prob worker writes": stored, "driver reads (advantage)": stored,
              "update_actor workers read": stored}
    if has_ref:
        before["reference workers read"] = stored
    after = {"old-log-prob worker writes": stored, "driver reads (advantage)": stored}
    # What the estimator itself needs: the response part of the scores and one flag per sample.
    needed = nested_nbytes([response] * SAMPLES) * batch / SAMPLES + batch

    gib = 2**30
    print(f"recipe {args.recipe}: {prompts} prompts x n={n} = {batch} samples, {prompt} prompt + {response} "
          f"response tokens, reference pass: {'yes' if has_ref else 'no'}")
    print(f"{'transfer':<32}{'before GiB':>12}{'after GiB':>12}")
    for name in before:
        print(f"{name:<32}{before[name] / gib:>12.3f}{after.get(name, 0) / gib:>12.3f}")
    total_before, total_after = sum(before.values()), sum(after.values())
    print(f"{'total per step':<32}{total_before / gib:>12.3f}{total_after / gib:>12.3f}")
    print(f"after / before: {total_after / total_before:.2f}")
    print(f"estimator's own need (response scores + a flag per sample): {needed / gib:.3f} GiB "
          f"({needed / stored:.2f} of what is stored)")


if __name__ == "__main__":
    main()
