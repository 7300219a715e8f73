"""chunksft: chunk-level masked-diffusion SFT with a recursive refinement head on DeepSpeed ZeRO-3.

Install torch first (`pip install torch==2.13.0`, a CPU wheel on the dev machines); the ranges
below are satisfied by it, so pip never pulls a second (CUDA) torch.
"""
import os
import warnings
from glob import glob

from setuptools import find_packages, setup


def cpp_extension() -> dict:
    """csrc/ as the `chunksft._C` torch extension when torch and a compiler are usable at build time.

    Optional: CHUNKSFT_SKIP_CPP=1, no torch in the build environment (pip's build isolation) or a
    failed compile just skip it, and chunksft JIT-builds csrc/ on first use instead (chunksft/ops/_cpp.py).
    """
    if os.environ.get("CHUNKSFT_SKIP_CPP", "0") == "1":
        return {}
    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        return {}

    class OptionalBuildExt(BuildExtension):
        def run(self):
            try:
                super().run()
            except Exception as exc:  # noqa: BLE001 - the extension is an optimisation, never a requirement
                warnings.warn(f"chunksft: C++ extension not built ({exc}); it will be JIT-built on first use")

    # Flags: keep in sync with chunksft/ops/_cpp.py CXX_FLAGS / LD_FLAGS (OpenMP makes ATen's
    # at::parallel_for in csrc/ run on torch's threads).
    openmp = torch.backends.openmp.is_available()
    ext = CppExtension("chunksft._C", sorted(glob("csrc/*.cpp")),
                       extra_compile_args=["-O3", "-fopenmp" if openmp else "-fopenmp-simd", "-fno-trapping-math",
                                           "-fno-math-errno"],
                       extra_link_args=["-fopenmp"] if openmp else [])
    return {"ext_modules": [ext], "cmdclass": {"build_ext": OptionalBuildExt}}


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
        "accelerate>=1.1",  # transformers' HfDeepSpeedConfig (ZeRO-3 aware loading) needs it
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
            "chunksft-export=chunksft.checkpoint.export:main",
            "chunksft-generate=chunksft.generate:main",
            "chunksft-evaluate=chunksft.evaluate:main",
        ]
    },
    **cpp_extension(),
)
