"""The demo's warm start: minutes of supervised fine-tuning of the tiny Qwen2.5-VL on the shapes task.

A random model never answers correctly, so every reward, every GRPO advantage and every VGPO
advantage is 0 and RL has nothing to learn from. This fine-tunes the tiny model (plain torch +
transformers, no verl) on answers `\\boxed{<answer>}<|im_end|>` to the same chat prompt verl builds
(image, then question), and stops as soon as its greedy held-out accuracy reaches TARGET_ACCURACY
(or keeps the previous evaluation's weights if that one interval jumped past UPPER_ACCURACY):
right often enough that groups of sampled responses have mixed rewards, wrong often enough that
RL has room to improve. Held-out accuracy is measured exactly as greedy decoding would score it:
the prompt and every response token have the same length for every example, so a response is
decoded greedily iff each of its tokens is the argmax given the ones before (teacher forcing).

Deterministic given the seed on one machine (data from `random.Random(seed)`, init and batch order
from `torch.manual_seed(seed)`). The checkpoint is saved in float32, so verl's float32 actor starts
from exactly these weights; `warm_start.json` next to it records the step count and accuracies.

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

from vgpo_verl.demo.shapes_data import DEFAULT_TASK, example, question

SEED = 0
TRAIN_EXAMPLES = 1024
HELDOUT_EXAMPLES = 128
BATCH = 16
LR = 2e-3
TARGET_ACCURACY = 0.40
# If one evaluation interval jumps past this (the format and the colours can click together), the
# previous evaluation's weights are kept when they were right at least 25 % of the time.
UPPER_ACCURACY = 0.60
LOWER_ACCURACY = 0.25
EVAL_EVERY = 5
MAX_STEPS = 400
# Its own data stream: neither the RL training prompts nor the validation prompts (shapes_data seeds).
DATA_SEED_OFFSET = 7_000_001
INFO_FILE = "warm_start.json"


def answer_text(answer: str) -> str:
    """What the warm start learns to say: the answer alone, boxed (graded by every boxed grader)."""
    return f"\\boxed{{{answer}}}"


def _encode(processor, examples, task: str):
    """Prompt + answer + <|im_end|> for each (PIL image, answer), as one unpadded batch."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question(task).replace("<image>", "")}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    texts = [prompt + answer_text(answer) + "<|im_end|>" for _, answer in examples]
    encoded = processor(text=texts, images=[image for image, _ in examples], return_tensors="pt")
    if int(encoded["attention_mask"].min()) != 1:
        raise RuntimeError("warm start: examples of different lengths (an answer of several tokens?); "
                           "the teacher-forced accuracy needs one length")
    return encoded


def _response_length(tokenizer, task: str) -> int:
    """Tokens of `\\boxed{answer}<|im_end|>`, the same for every answer of the task (checked)."""
    answers = {example(task, random.Random(seed))[1] for seed in range(64)}
    lengths = {len(tokenizer(answer_text(a) + "<|im_end|>")["input_ids"]) for a in answers}
    if len(lengths) != 1:
        raise RuntimeError(f"warm start: the answers {sorted(answers)} tokenize to different lengths {lengths}")
    return lengths.pop()


def _examples(n: int, seed: int, task: str):
    from PIL import Image

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        png, answer, _ = example(task, rng)
        out.append((Image.open(io.BytesIO(png)).convert("RGB"), answer))
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

    vgpo_verl.cpu.enable()
    torch.manual_seed(seed)
    processor = AutoProcessor.from_pretrained(base_dir)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(base_dir, dtype=torch.float32)
    train_set = _encode(processor, _examples(TRAIN_EXAMPLES, seed + DATA_SEED_OFFSET, task), task)
    heldout = _encode(processor, _examples(HELDOUT_EXAMPLES, seed + 2 * DATA_SEED_OFFSET, task), task)
    response_len = _response_length(processor.tokenizer, task)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)

    def heldout_accuracy() -> float:
        model.eval()
        with torch.no_grad():
            logits = _response_logits(model, _rows(heldout, torch.arange(HELDOUT_EXAMPLES)), response_len)
        target = heldout["input_ids"][:, -response_len:]
        model.train()
        return (logits.argmax(-1) == target).all(dim=-1).float().mean().item()

    history = []
    step, accuracy = 0, heldout_accuracy()
    previous = (step, accuracy, {k: v.detach().clone() for k, v in model.state_dict().items()})
    generator = torch.Generator().manual_seed(seed)
    model.train()
    while accuracy < TARGET_ACCURACY and step < MAX_STEPS:
        order = torch.randperm(TRAIN_EXAMPLES, generator=generator)
        for start in range(0, TRAIN_EXAMPLES - BATCH + 1, BATCH):
            kwargs = _rows(train_set, order[start : start + BATCH])
            logits = _response_logits(model, kwargs, response_len)
            target = kwargs["input_ids"][:, -response_len:]
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step % EVAL_EVERY == 0:
                accuracy = heldout_accuracy()
                history.append({"step": step, "loss": round(loss.item(), 4), "heldout_accuracy": accuracy})
                print(f"[warm start] step {step}: loss {loss.item():.3f}, held-out greedy accuracy {accuracy:.3f}",
                      flush=True)
                if accuracy >= TARGET_ACCURACY or step >= MAX_STEPS:
                    break
                previous = (step, accuracy, {k: v.detach().clone() for k, v in model.state_dict().items()})
    if accuracy > UPPER_ACCURACY and previous[1] >= LOWER_ACCURACY:
        step, accuracy, state = previous
        model.load_state_dict(state)
        print(f"[warm start] overshot; keeping step {step} (held-out greedy accuracy {accuracy:.3f})", flush=True)
    if accuracy < LOWER_ACCURACY:
        raise RuntimeError(f"warm start: held-out accuracy {accuracy:.3f} after {step} steps, below "
                           f"{LOWER_ACCURACY}: RL would see (almost) no reward")

    model.save_pretrained(out_dir)
    for item in base_dir.iterdir():  # tokenizer, processor configs, chat template: as the base model's
        if not item.name.startswith(("model", "config.json", "generation_config.json")) and item.is_file():
            shutil.copy2(item, out_dir / item.name)
    info = {"base": str(base_dir), "task": task, "seed": seed, "steps": step, "batch": BATCH, "lr": LR,
            "train_examples": TRAIN_EXAMPLES, "heldout_examples": HELDOUT_EXAMPLES,
            "target_accuracy": TARGET_ACCURACY, "heldout_accuracy": accuracy, "history": history}
    # (`steps` is the step whose weights were kept; `history` lists every evaluation)
    (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2))
    return info


def build_warm_start(base_dir, out_dir, seed: int = SEED, task: str = DEFAULT_TASK) -> pathlib.Path:
    """The warm-started checkpoint under `out_dir`, trained (in a child process) if not there yet."""
    out = pathlib.Path(out_dir)
    if (out / INFO_FILE).exists():
        return out
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
    print(f"[warm start] {info['steps']} steps, held-out greedy accuracy {info['heldout_accuracy']:.3f} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
