"""The demo's warm start: minutes of supervised fine-tuning of the tiny Qwen2.5-VL on the shapes task.

A random model never answers correctly, so every reward, every GRPO advantage and every VGPO
advantage is 0 and RL has nothing to learn from. This fine-tunes the tiny model (plain torch +
transformers, no verl) on answers `\\boxed{<answer>}<|im_end|>` to the same chat prompt verl builds
(image, then question), for a fixed STEPS steps, with a hedged target for the answer token:
(1 - ANSWER_SMOOTHING) on the right answer plus ANSWER_SMOOTHING spread evenly over the task's
answers (label smoothing restricted to the answers; the format tokens keep hard targets). The
model so learns to see the colour (greedy held-out accuracy ~100 %) and to keep the format, but
samples the right answer at temperature 1 only about (1 - s) + s / 4 = 47.5 % of the time (s = 0.7;
measured: 45 %): groups of sampled responses have mixed rewards, and RL has a clear thing to learn,
making the policy as sure as it is right. Why this rather than stopping a plain fine-tuning early:
the tiny model learns the colours abruptly (chance to ~100 % greedy within ~10 steps), and a
checkpoint caught mid-jump (sampled 41 %, greedy 93 %) is fragile: an offline GRPO probe (8 x 8
responses per update, plain torch) broke its answer format at lr 3e-4 and at 1e-4 (exact-answer
probability 39 % -> 3 % in 12 updates); from this warm start the same probe at lr 1e-4 raised the
exact-answer probability from 45 % to 62 % in 12 updates with the format intact.

The "describe" task (shapes_data, for `--mechanism`) learns the same way a 39-token response that
names the shape's kind three times and gives the colour last (hedged as above, the answer token
weighing as much as the rest: TASK_ANSWER_WEIGHT; TASK_BASE: it starts from the colour warm start). Its kind tokens are "description" tokens, left out of the accuracies
below and reported on their own (greedy: every kind token is the argmax).

The sampled accuracy reported is the probability that one response sampled at temperature 1 (what
verl's rollout and our validation do) is exactly the answer: the product of the answer's token
probabilities under teacher forcing (description tokens left out), averaged over held-out examples
(every prompt and answer has the same token length); the greedy accuracy is whether every one of
those tokens is the argmax.

Deterministic given the seed on one machine (data from `random.Random(seed)`, init and batch order
from `torch.manual_seed(seed)`). The checkpoint is saved in float32, so verl's float32 actor starts
from exactly these weights; `warm_start.json` next to it records the recipe and accuracies. A cached
checkpoint made under another recipe (an older release's) is rebuilt, not reused.

Run in its own process (`python -m vgpo_verl.demo.warm_start BASE OUT`): it turns on the CPU vision
path (vgpo_verl.cpu.enable), which changes the process that turns it on.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import random
import shutil
import subprocess
import sys
import tempfile

from vgpo_verl.demo.shapes_data import COLOUR_RADIUS, DEFAULT_TASK, example, question, reference_response

SEED = 0
TRAIN_EXAMPLES = 1024
HELDOUT_EXAMPLES = 128
BATCH = 16
LR = 2e-3
STEPS = 200  # the colours click at ~110-130 steps; by 200 the hedged answer probability has settled
# Tasks whose warm start continues another task's (its checkpoint, same seed) and for how many steps.
# describe continues colour, whose vision tower already tells the colours apart.
TASK_BASE = {"describe": "colour"}
TASK_STEPS = {"describe": 200}
# Tasks whose answer token weighs more than one token in the loss: describe's as much as its other
# 38 together. With weight 1 the tiny model, its answer 36 tokens after the image and one of 39 in
# the loss, relearnt to read the colour there slowly (greedy 55 % after 200 steps from the colour
# warm start, held-out sampled accuracy 0.18-0.26 over steps 160-240; from the random model 31 %
# after 200 and 60 % after 400 steps); with weight 38: greedy 100 % from step 120, sampled 0.33 at
# step 200. It never learns the kind (greedy at or below chance): its descriptions stay imperfect.
TASK_ANSWER_WEIGHT = {"describe": 38}
ANSWER_SMOOTHING = 0.7  # of the answer token's target mass spread evenly over the task's answers
# A warm start whose held-out sampled accuracy ends below this gives RL (almost) no reward: an error.
LOWER_ACCURACY = 0.25
EVAL_EVERY = 20
# Its own data stream: neither the RL training prompts nor the validation prompts (shapes_data seeds).
DATA_SEED_OFFSET = 7_000_001
INFO_FILE = "warm_start.json"


def recipe(seed: int = SEED, task: str = DEFAULT_TASK) -> dict:
    """Everything the checkpoint depends on besides the base model (JSON values, as cached)."""
    out = {"task": task, "seed": seed, "steps": TASK_STEPS.get(task, STEPS), "batch": BATCH, "lr": LR,
           "train_examples": TRAIN_EXAMPLES, "heldout_examples": HELDOUT_EXAMPLES, "answer_smoothing": ANSWER_SMOOTHING,
           "colour_radius": list(COLOUR_RADIUS)}
    if task in TASK_ANSWER_WEIGHT:
        out["answer_weight"] = TASK_ANSWER_WEIGHT[task]
    if task in TASK_BASE:
        out["starts_from"] = recipe(seed, TASK_BASE[task])
    return out


def _check_base(base_dir: pathlib.Path, seed: int, task: str) -> None:
    """A task that continues another task's warm start must be given that checkpoint (its recipe checked)."""
    if task not in TASK_BASE:
        return
    wanted = recipe(seed, TASK_BASE[task])
    info_path = pathlib.Path(base_dir) / INFO_FILE
    found = json.loads(info_path.read_text()) if info_path.exists() else {}
    if any(found.get(k) != v for k, v in wanted.items()):
        raise ValueError(f"the {task} warm start continues the {TASK_BASE[task]} warm start (seed {seed}), but {base_dir} "
                         f"is not one made under its current recipe; pass build_warm_start(<tiny model>, <dir>, "
                         f"seed={seed}, task={TASK_BASE[task]!r}) as the base")


def answer_text(answer: str) -> str:
    """What the colour warm start learns to say: the answer alone, boxed (graded by every boxed grader)."""
    return reference_response(DEFAULT_TASK, answer, [])


def _encode(processor, examples, task: str):
    """Prompt + reference response + <|im_end|> for each (PIL image, answer, shapes), as one unpadded batch."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question(task).replace("<image>", "")}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    texts = [prompt + reference_response(task, answer, shapes) + "<|im_end|>" for _, answer, shapes in examples]
    encoded = processor(text=texts, images=[image for image, _, _ in examples], return_tensors="pt")
    if int(encoded["attention_mask"].min()) != 1:
        raise RuntimeError("warm start: examples of different lengths (an answer of several tokens?); "
                           "the teacher-forced accuracy needs one length")
    return encoded


def _reference_ids(tokenizer, task: str, answer: str, shapes: list[dict]) -> list[int]:
    return tokenizer(reference_response(task, answer, shapes) + "<|im_end|>")["input_ids"]


def _response_length(tokenizer, task: str) -> int:
    """Tokens of a reference response with its <|im_end|>, the same for every example of the task (checked)."""
    lengths = {len(_reference_ids(tokenizer, task, answer, shapes))
               for _, answer, shapes in (example(task, random.Random(seed)) for seed in range(64))}
    if len(lengths) != 1:
        raise RuntimeError(f"warm start: the {task} task's reference responses tokenize to different lengths {lengths}")
    return lengths.pop()


def _answer_tokens(tokenizer, task: str):
    """(index of the answer token in the response, (K,) token ids of the task's K answers)."""
    import torch

    samples = [example(task, random.Random(seed))[1:] for seed in range(64)]
    answers = sorted({answer for answer, _ in samples})
    ids = torch.tensor([_reference_ids(tokenizer, task, a, samples[0][1]) for a in answers])  # (K, R)
    differ = (ids != ids[:1]).any(dim=0).nonzero().flatten().tolist()
    if len(differ) != 1:
        raise RuntimeError(f"warm start: the answers {answers} differ in tokens {differ}, not in exactly one")
    return differ[0], ids[:, differ[0]]


def _description_tokens(tokenizer, task: str):
    """(R,) bool: response tokens that describe the image other than the answer (the describe task's
    shape kind; none for colour and count): where reference responses with one answer differ."""
    import torch

    samples = [example(task, random.Random(seed))[1:] for seed in range(64)]
    answer = samples[0][0]
    ids = torch.tensor([_reference_ids(tokenizer, task, answer, shapes) for _, shapes in samples])  # (N, R)
    return (ids != ids[:1]).any(dim=0)


def _examples(n: int, seed: int, task: str):
    from PIL import Image

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        png, answer, shapes = example(task, rng)
        out.append((Image.open(io.BytesIO(png)).convert("RGB"), answer, shapes))
    return out


def _rows(encoded, index):
    """Model kwargs for the examples `index` of an encoded batch (every image has the same patch count)."""
    n = encoded["input_ids"].shape[0]
    pixels = encoded["pixel_values"].view(n, -1, encoded["pixel_values"].shape[-1])[index]
    kwargs = {k: v[index] for k, v in encoded.items() if k != "pixel_values"}
    kwargs["pixel_values"] = pixels.reshape(-1, pixels.shape[-1])
    return kwargs


def _response_logits(model, kwargs, response_len: int):
    """(B, R, V) logits at the positions that predict the R response tokens (lm_head on those only)."""
    hidden = model.model(**kwargs).last_hidden_state  # (B, L, H)
    length = hidden.shape[1]
    return model.lm_head(hidden[:, length - response_len - 1 : length - 1])


def train(base_dir: pathlib.Path, out_dir: pathlib.Path, seed: int = SEED, task: str = DEFAULT_TASK) -> dict:
    """Fine-tune `base_dir` into `out_dir` (written in place; `build_warm_start` handles atomicity)."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    import vgpo_verl.cpu

    _check_base(base_dir, seed, task)
    vgpo_verl.cpu.enable()
    torch.manual_seed(seed)
    processor = AutoProcessor.from_pretrained(base_dir)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(base_dir, dtype=torch.float32)
    train_set = _encode(processor, _examples(TRAIN_EXAMPLES, seed + DATA_SEED_OFFSET, task), task)
    heldout = _encode(processor, _examples(HELDOUT_EXAMPLES, seed + 2 * DATA_SEED_OFFSET, task), task)
    response_len = _response_length(processor.tokenizer, task)
    answer_at, answer_ids = _answer_tokens(processor.tokenizer, task)
    described = _description_tokens(processor.tokenizer, task)  # (R,) bool
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)

    def heldout_accuracy() -> tuple[float, float, float | None]:
        """(sampled, greedy, description) accuracy on the held-out examples; see the module docstring."""
        model.eval()
        with torch.no_grad():
            logits = _response_logits(model, _rows(heldout, torch.arange(HELDOUT_EXAMPLES)), response_len)
        model.train()
        target = heldout["input_ids"][:, -response_len:]  # (N, R)
        token_logp = torch.log_softmax(logits, dim=-1).gather(-1, target[..., None]).squeeze(-1)  # (N, R)
        right = logits.argmax(-1) == target  # (N, R)
        sampled = token_logp[:, ~described].sum(-1).exp().mean().item()
        greedy = right[:, ~described].all(dim=-1).float().mean().item()
        description = right[:, described].all(dim=-1).float().mean().item() if bool(described.any()) else None
        return sampled, greedy, description

    answer_weight = recipe(seed, task).get("answer_weight", 1)

    def loss_of(logits, target):
        """Mean over the (B, R) response tokens of the cross-entropy, the answer token's target hedged
        and weighing `answer_weight` tokens."""
        logp = torch.log_softmax(logits, dim=-1)  # (B, R, V)
        nll = -logp.gather(-1, target[..., None]).squeeze(-1)  # (B, R)
        spread = -logp[:, answer_at][:, answer_ids].mean(-1)  # (B,): cross-entropy to uniform over answers
        hedged = (1 - ANSWER_SMOOTHING) * nll[:, answer_at] + ANSWER_SMOOTHING * spread
        per_token = torch.cat([nll[:, :answer_at], hedged[:, None], nll[:, answer_at + 1 :]], dim=1)
        if answer_weight == 1:
            return per_token.mean()
        weight = torch.ones(per_token.shape[1])
        weight[answer_at] = answer_weight
        return (per_token * weight).sum(dim=1).mean() / weight.sum()

    steps = recipe(seed, task)["steps"]
    history = []
    generator = torch.Generator().manual_seed(seed)
    model.train()
    step = 0
    while step < steps:
        order = torch.randperm(TRAIN_EXAMPLES, generator=generator)
        for start in range(0, TRAIN_EXAMPLES - BATCH + 1, BATCH):
            kwargs = _rows(train_set, order[start : start + BATCH])
            loss = loss_of(_response_logits(model, kwargs, response_len), kwargs["input_ids"][:, -response_len:])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step % EVAL_EVERY == 0 or step == steps:
                accuracy, greedy, description = heldout_accuracy()
                history.append({"step": step, "loss": round(loss.item(), 4), "heldout_accuracy": accuracy,
                                "heldout_greedy_accuracy": greedy})
                shown = ""
                if description is not None:
                    history[-1]["heldout_description_accuracy"] = description
                    shown = f", description greedy {description:.3f}"
                print(f"[warm start] step {step}: loss {loss.item():.3f}, held-out accuracy sampled {accuracy:.3f}, "
                      f"greedy {greedy:.3f}{shown}", flush=True)
            if step == steps:
                break
    if accuracy < LOWER_ACCURACY:
        raise RuntimeError(f"warm start: held-out accuracy {accuracy:.3f} after {step} steps, below "
                           f"{LOWER_ACCURACY}: RL would see (almost) no reward")

    model.save_pretrained(out_dir)
    for item in base_dir.iterdir():  # tokenizer, processor configs, chat template: as the base model's
        if not item.name.startswith(("model", "config.json", "generation_config.json")) and item.is_file():
            shutil.copy2(item, out_dir / item.name)
    info = {"base": str(base_dir), **recipe(seed, task), **{k: v for k, v in history[-1].items() if k.startswith("heldout")},
            "history": history}
    (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2))
    return info


def build_warm_start(base_dir, out_dir, seed: int = SEED, task: str = DEFAULT_TASK) -> pathlib.Path:
    """The warm-started checkpoint under `out_dir`, trained (in a child process) if not there yet."""
    out = pathlib.Path(out_dir)
    if (out / INFO_FILE).exists():
        cached = json.loads((out / INFO_FILE).read_text())
        stale = {k: (cached.get(k), v) for k, v in recipe(seed, task).items() if cached.get(k) != v}
        if not stale:
            return out
        print(f"[warm start] {out} was made with another recipe ({stale}, cached vs now): rebuilding", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        subprocess.run([sys.executable, "-m", "vgpo_verl.demo.warm_start", str(base_dir), str(tmp),
                        "--seed", str(seed), "--task", task], check=True)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)  # an interrupted build never leaves a checkpoint that looks complete
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m vgpo_verl.demo.warm_start", description=__doc__.splitlines()[0])
    parser.add_argument("base", type=pathlib.Path, help="the tiny model (vgpo_verl.demo.tiny_model)")
    parser.add_argument("out", type=pathlib.Path, help="where to write the fine-tuned checkpoint")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--task", default=DEFAULT_TASK)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    info = train(args.base, args.out, args.seed, args.task)
    print(f"[warm start] {info['steps']} steps, held-out accuracy sampled {info['heldout_accuracy']:.3f}, "
          f"greedy {info['heldout_greedy_accuracy']:.3f} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
