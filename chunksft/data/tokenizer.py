"""Tokenizer loading: the bundled default or any Hugging Face tokenizer.

Masked diffusion needs a mask token and the encoder needs EOS; a tokenizer without a pad token
pads with EOS (padding positions are excluded by the attention mask anyway).
"""
from __future__ import annotations

from chunksft.data.bundled.vocab import MASK_TOKEN
from chunksft.data.errors import DataError


def load_tokenizer(name_or_path: str | None = None, *, add_mask_token: bool = False):
    """-> transformers PreTrainedTokenizerFast.

    name_or_path: None = the bundled tokenizer (built on first use); otherwise any local directory
    or hub name that `AutoTokenizer.from_pretrained` accepts.
    add_mask_token: add `<|mask|>` as the mask token when the tokenizer has none (the model's
    embedding matrix must then be resized to len(tokenizer)); without it a missing mask token is an error.
    """
    from transformers import AutoTokenizer

    if name_or_path is None:
        from chunksft.data.bundled import ensure_bundled

        path = str(ensure_bundled() / "tokenizer")
    else:
        path = name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"tokenizer {path!r} cannot be loaded ({first}); pass a tokenizer directory or hub name, "
                        f"or omit it for the bundled tokenizer") from exc
    if tokenizer.eos_token_id is None:
        raise DataError(f"tokenizer {path!r} has no EOS token; set eos_token in its tokenizer_config.json")
    if tokenizer.mask_token_id is None:
        if not add_mask_token:
            raise DataError(f"tokenizer {path!r} has no mask token; add one (e.g. {MASK_TOKEN!r}) to its "
                            f"tokenizer_config.json as mask_token, or load it with add_mask_token=True")
        tokenizer.add_special_tokens({"mask_token": MASK_TOKEN})
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
