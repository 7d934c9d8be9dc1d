"""Reward of the two-node test (tests/test_localhost_slurm.py): the parity of the response's length.

The demo's untrained model never answers right, so with the demo's reward every reward and every
advantage is 0 and "advantages == GRPO x alpha x psi" would hold trivially. Sampled responses differ
in length, so this reward is mixed within a group from the first step: the advantages are non-zero.
"""


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **unused_kwargs) -> float:
    return float(len(solution_str) % 2)
