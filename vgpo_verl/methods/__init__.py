"""The math of our methods, in pure torch, each file readable next to its paper (VGPO_SPEC.md for vgpo).

- `vgpo`: VGPO's token weight ψ and trajectory weight α (VGPOConfig, compute_vgpo_weights);
- `scoring`: the visual prototype and every token's cosine to it, from one layer's hidden states;
- `perturb`: VPPO's blackened image (pixel rows of each family's patch layout);
- `vppo`, `entropy_shaping`: the comparison methods' advantages;
- `knobs`: the config dataclasses' registry (`CONFIG_CLASSES`, `config_class`), shared field (`knob`) and
  reader (`from_knobs`, every problem at once: `KnobErrors`).

May import: torch, numpy, the standard library and each other. Nothing of verl, Ray, vLLM or
transformers, nothing else of vgpo_verl (the contracts in .importlinter fail a change that does).
"""
