"""The hybrid model: bidirectional HF backbone + recursive refinement head, registered with the Auto classes."""
from transformers import AutoConfig, AutoModel

from chunksft.models.attention import ATTN_IMPLEMENTATION, ChunkLayout, chunksft_attention
from chunksft.models.config import HybridConfig
from chunksft.models.hybrid import HybridModel, HybridOutput

AutoConfig.register(HybridConfig.model_type, HybridConfig, exist_ok=True)
AutoModel.register(HybridConfig, HybridModel, exist_ok=True)

__all__ = ["HybridConfig", "HybridModel", "HybridOutput", "ChunkLayout", "chunksft_attention", "ATTN_IMPLEMENTATION"]
