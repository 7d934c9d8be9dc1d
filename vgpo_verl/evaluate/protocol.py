"""The paper's evaluation protocol (spec, "Evaluation protocol"): the defaults of every command here.

Protocol (Look-Back's eval/main.py and eval/cal_score.py, github PKU-YuanGroup/Look-Back, which the
paper's numbers come from): greedy decoding, max model length 8192, at most 2048 new tokens (their
``--max-tokens``), image pixels 262,144-1,000,000, accuracy of the last ``\\boxed{}`` answer graded by
``vgpo_verl.data.grading`` ``"lookback"`` (their ``accuracy_reward``; ``--grader vgpo`` grades with the
training reward instead). ``--avg-k K`` adds avg@K: K samples per prompt at temperature 1.0, mean accuracy.
"""

PAPER_MAX_MODEL_LEN = 8192
PAPER_MAX_NEW_TOKENS = 2048  # Look-Back eval/main.py --max-tokens
PAPER_GRADER = "lookback"
PAPER_MIN_PIXELS = 262_144
PAPER_MAX_PIXELS = 1_000_000
AVG_K_TEMPERATURE = 1.0
