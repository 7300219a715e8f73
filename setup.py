"""chunksft: chunk-level masked-diffusion SFT with a recursive refinement head on DeepSpeed ZeRO-3.

Install torch first (`pip install torch==2.13.0`, a CPU wheel on the dev machines); the ranges
below are satisfied by it, so pip never pulls a second (CUDA) torch.
"""
from setuptools import find_packages, setup

setup(
    name="chunksft",
    version="0.1.0",
    description="Chunk-level masked-diffusion SFT with a recursive refinement head (LLaDA-TRM hybrid)",
    python_requires=">=3.10",
    packages=find_packages(include=["chunksft", "chunksft.*"]),
    include_package_data=True,
    package_data={"chunksft": ["data/bundled/*.json", "data/bundled/*.md"]},
    install_requires=[
        "torch>=2.5",
        "transformers>=5.0,<6",
        "tokenizers>=0.21",
        "datasets>=3.0",
        "deepspeed>=0.19,<0.20",
        "safetensors",
        "pyyaml",
        "tqdm",
        "tensorboard",
        "matplotlib",
        "numpy",
    ],
    extras_require={
        # flash-attn needs a CUDA build of torch; it is imported lazily and only used on CUDA.
        "gpu": ["flash-attn>=2.6", "triton>=3.2"],
        "dev": ["pytest>=8", "pytest-timeout", "triton>=3.2"],
    },
    entry_points={
        "console_scripts": [
            "chunksft-train=chunksft.train.__main__:main",
            "chunksft-export=chunksft.export:main",
            "chunksft-generate=chunksft.generate:main",
            "chunksft-evaluate=chunksft.evaluate:main",
        ]
    },
)
