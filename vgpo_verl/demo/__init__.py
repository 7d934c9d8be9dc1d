"""The CPU demo: a tiny random Qwen2.5-VL (tiny_model), a synthetic counting task (shapes_data), and
`python -m vgpo_verl.demo`, which trains it with verl + VGPO for two steps (run, summary, memory)."""
