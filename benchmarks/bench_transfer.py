"""TransferQueue bytes per training step spent on the engine's extra fields: the old full-sequence
layout next to the response layout of issue 12, measured in one run.

The scoring engine adds its outputs to verl's model output; verl concatenates them into per-sample
rows (`postprocess_batch_func`) and the worker writes every row to the TransferQueue. Only the driver
reads them back, once, to compute the advantages (vgpo_verl/plugin/trainer_wiring.py takes them out of the
field list the reference and update workers fetch). Per step each stored byte thus moves twice.

- full sequence (before): `vgpo_visual_score` and a per-token copy of `vgpo_has_visual`, float32 over
  prompt + response tokens; likewise VPPO's `vppo_aug_log_probs`.
- response (after, vgpo_verl/methods/scoring.py `score_outputs`, vgpo_verl/plugin/engine.py): the response slice of
  the scores (float32) and one bool per sample; VPPO's aug log-probs over the response only.

Shapes come from a recipe (default recipes/vgpo_qwen2_5_vl_7b.yaml, composed by Hydra like
main_ppo does): rollout batch x n samples, prompt and response at their maximum lengths unless
--prompt-tokens / --response-tokens give typical ones. Byte counts are the values + offsets of the
nested tensors verl's `postprocess_batch_func` builds from each layout, for 64 samples, scaled to the
batch.

    python benchmarks/bench_transfer.py [--recipe vgpo_qwen2_5_vl_7b] [--prompt-tokens P] [--response-tokens R]
    python benchmarks/bench_transfer.py --quick    # 8 samples built instead of 64: the same exact ratio
"""

import argparse
import pathlib

import torch

SAMPLES, QUICK_SAMPLES = 64, 8  # tensors built for this many samples; bytes scale linearly with the batch
GIB, MIB = 2**30, 2**20


def stored_nbytes(model_output: dict[str, torch.Tensor]) -> dict[str, int]:
    """Bytes of each field as the worker writes it: verl's own concatenation of one micro-batch's model
    output into per-sample rows (a jagged nested tensor per key), values + offsets."""
    from tensordict import TensorDict
    from verl.utils import tensordict_utils as tu
    from verl.workers.engine.utils import postprocess_batch_func

    data = TensorDict({}, batch_size=[])
    tu.assign_non_tensor(data, use_dynamic_bsz=False)
    rows = postprocess_batch_func([{"model_output": model_output}], None, data)["model_output"]
    return {key: value.values().nbytes + value.offsets().nbytes for key, value in rows.items()}


def full_sequence_layout(lengths: torch.Tensor) -> dict[str, torch.Tensor]:
    """The engine's outputs before issue 12: float32 over every token of each sequence."""
    from vgpo_verl.methods.perturb import AUG_LOG_PROBS_KEY
    from vgpo_verl.methods.scoring import HAS_VISUAL_KEY, SCORE_KEY

    offsets = torch.nn.functional.pad(lengths.cumsum(0), (1, 0))

    def full():
        return torch.nested.nested_tensor_from_jagged(torch.zeros(int(lengths.sum())), offsets)

    return {SCORE_KEY: full(), HAS_VISUAL_KEY: full(), AUG_LOG_PROBS_KEY: full()}


def response_layout(lengths: torch.Tensor, responses: torch.Tensor) -> dict[str, torch.Tensor]:
    """The engine's outputs now, built by the functions the engine calls."""
    from vgpo_verl.methods.perturb import AUG_LOG_PROBS_KEY
    from vgpo_verl.methods.scoring import response_slice, score_outputs

    cu_seqlens = torch.nn.functional.pad(lengths.cumsum(0), (1, 0))
    similarity = torch.zeros(int(lengths.sum()))  # (N,) packed, as the scoring hook returns it
    has_visual = torch.ones(len(lengths), dtype=torch.bool)
    outputs = score_outputs(similarity, has_visual, cu_seqlens, responses)
    outputs[AUG_LOG_PROBS_KEY] = response_slice(torch.zeros(int(lengths.sum())), cu_seqlens, responses, shift=1)
    return outputs


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
    parser.add_argument("--quick", action="store_true",
                        help=f"build {QUICK_SAMPLES} samples instead of {SAMPLES} (byte counts are exact either way)")
    args = parser.parse_args()
    samples = QUICK_SAMPLES if args.quick else SAMPLES

    from verl.trainer.ppo.utils import need_reference_policy

    from vgpo_verl.methods.perturb import AUG_LOG_PROBS_KEY
    from vgpo_verl.methods.scoring import HAS_VISUAL_KEY, SCORE_KEY

    config = compose(args.recipe)
    prompts, n = int(config.data.train_batch_size), int(config.actor_rollout_ref.rollout.n)
    prompt = args.prompt_tokens or int(config.data.max_prompt_length)
    response = args.response_tokens or int(config.data.max_response_length)
    batch = prompts * n
    has_ref = bool(need_reference_policy(config))

    responses = torch.full((samples,), response)
    scale = batch / samples
    before = {k: v * scale for k, v in stored_nbytes(full_sequence_layout(responses + prompt)).items()}
    after = {k: v * scale for k, v in stored_nbytes(response_layout(responses + prompt, responses)).items()}

    print(f"recipe {args.recipe}: {prompts} prompts x n={n} = {batch} samples, {prompt} prompt + {response} "
          f"response tokens, reference pass: {'yes' if has_ref else 'no'}")
    print(f"\n{'stored per step':<34}{'full seq. MiB':>14}{'response MiB':>14}")
    for key in (SCORE_KEY, HAS_VISUAL_KEY):
        print(f"{key:<34}{before[key] / MIB:>14.3f}{after[key] / MIB:>14.3f}")
    vgpo_before, vgpo_after = before[SCORE_KEY] + before[HAS_VISUAL_KEY], after[SCORE_KEY] + after[HAS_VISUAL_KEY]
    print(f"{'vgpo, both fields':<34}{vgpo_before / MIB:>14.3f}{vgpo_after / MIB:>14.3f}")
    print(f"{AUG_LOG_PROBS_KEY + ' (vppo)':<34}{before[AUG_LOG_PROBS_KEY] / MIB:>14.3f}"
          f"{after[AUG_LOG_PROBS_KEY] / MIB:>14.3f}")

    # One v1 step: the scoring worker writes the fields, the driver reads them once (the field-list
    # change of issue 12 keeps the reference and update workers from fetching them).
    moves = {"old-log-prob worker writes": 1, "driver reads (advantage)": 1}
    print(f"\n{'vgpo transfer per step':<34}{'full seq. GiB':>14}{'response GiB':>14}")
    for name, times in moves.items():
        print(f"{name:<34}{times * vgpo_before / GIB:>14.3f}{times * vgpo_after / GIB:>14.3f}")
    total_before, total_after = 2 * vgpo_before, 2 * vgpo_after
    print(f"{'total per step':<34}{total_before / GIB:>14.3f}{total_after / GIB:>14.3f}")
    print(f"response / full sequence: {total_after / total_before:.3f}")
    moved = 2 + 1 + has_ref  # before the field-list change the update (and reference) workers read them too
    print(f"(full sequence before the field-list change, every worker fetching: {moved * vgpo_before / GIB:.3f} GiB)")


if __name__ == "__main__":
    main()
