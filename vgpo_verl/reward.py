"""The reward of the published VGPO/DAPO runs, as a verl custom reward function.

verl loads it with ``reward.custom_reward_function.path=pkg://vgpo_verl.reward`` and
``name=compute_score`` (verl's ``load_module`` imports ``pkg://`` paths as packages); its reward
manager calls ``compute_score(data_source=, solution_str=, ground_truth=, extra_info=)`` per response,
plus whatever ``reward.custom_reward_function.reward_kwargs`` holds.

The grading is ``vgpo_verl.data.grading``: by default the authors' ``compute_score_wo_format`` (mathruler
on the last ``\\boxed{}``, no format bonus). ``reward.custom_reward_function.reward_kwargs.grader=lookback``
scores with the paper's evaluation scorer instead.
"""

from __future__ import annotations

from vgpo_verl.data.grading import score


def compute_score(data_source, solution_str, ground_truth, extra_info=None, grader: str = "vgpo",
                  **unused_kwargs) -> float:
    """verl custom reward function: 1.0 if the response's last boxed answer is right, else 0.0.

    ``ground_truth`` is ``reward_model.ground_truth`` of the parquet row, passed to the grader as is
    (the authors' pipeline hands the dataset's ``answer`` column over unchanged). ``unused_kwargs``
    absorbs what verl's reward managers add for model-based rewards.
    """
    if not isinstance(ground_truth, str) or not ground_truth.strip():
        raise ValueError(f"compute_score: the ground_truth of a {data_source!r} sample must be a non-empty "
                         f"string, got {ground_truth!r}; fix the dataset row")
    return score(solution_str, ground_truth, grader)
