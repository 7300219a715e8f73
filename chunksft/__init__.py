"""chunksft: chunk-level masked-diffusion SFT with a recursive refinement head on DeepSpeed ZeRO-3."""

__version__ = "0.1.0"
