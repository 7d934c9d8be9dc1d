"""The CPU demo: a tiny random Qwen2.5-VL (tiny_model), synthetic shapes tasks (shapes_data), a warm
start fine-tuned on the colour task so rewards vary (warm_start), and `python -m vgpo_verl.demo`,
which trains it with verl + VGPO for two steps (run, summary, memory) or, with `--learn`, draws
VGPO's and DAPO's learning curves from the same warm start (learn).

A tool: may import vgpo_verl.plugin, vgpo_verl.methods, the other tools, verl, Ray and vLLM."""
