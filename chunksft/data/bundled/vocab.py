"""The bundled tokenizer: byte-level BPE trained on the bundled train split (our own code).

- byte-level pre-tokenization, so decode(encode(text)) == text for any text;
- digits are split one per token *before* BPE, so no merge ever glues digits together and every
  number is spelled digit by digit (arithmetic stays learnable for a tiny model);
- special tokens at fixed ids 0..4 (the tiny model config hardcodes them), the vocabulary padded
  with `<|unused_k|>` tokens to exactly BUNDLED_VOCAB_SIZE.
"""
from __future__ import annotations

from typing import Iterable

PAD_TOKEN, EOS_TOKEN, MASK_TOKEN = "<|pad|>", "<|endoftext|>", "<|mask|>"
ANSWER_OPEN_TOKEN, ANSWER_CLOSE_TOKEN = "<answer>", "</answer>"
SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN, MASK_TOKEN, ANSWER_OPEN_TOKEN, ANSWER_CLOSE_TOKEN)
PAD_TOKEN_ID, EOS_TOKEN_ID, MASK_TOKEN_ID, ANSWER_OPEN_ID, ANSWER_CLOSE_ID = range(5)
BUNDLED_VOCAB_SIZE = 512


def train_tokenizer(texts: Iterable[str]):
    """Train the bundled BPE on `texts` -> transformers PreTrainedTokenizerFast with len == 512."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BUNDLED_VOCAB_SIZE, show_progress=False,
        # listed first, so the trainer gives them ids 0..4
        special_tokens=[AddedToken(t, normalized=False) for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    # The answer tags are ordinary text for decoding (skip_special_tokens keeps them, so answers
    # can be parsed from decoded output); only pad / eos / mask are special.
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in (ANSWER_OPEN_TOKEN, ANSWER_CLOSE_TOKEN)])
    unused = BUNDLED_VOCAB_SIZE - tok.get_vocab_size()
    if unused < 0:
        raise RuntimeError(f"bundled tokenizer has {tok.get_vocab_size()} > {BUNDLED_VOCAB_SIZE} tokens")
    tok.add_special_tokens([AddedToken(f"<|unused_{k}|>", normalized=False) for k in range(unused)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD_TOKEN, eos_token=EOS_TOKEN,
                                   mask_token=MASK_TOKEN, clean_up_tokenization_spaces=False)
