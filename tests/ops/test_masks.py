"""The dense layouts of `chunk_attention_mask` checked position by position against docs/design.md §1.5."""
import pytest
import torch

from chunksft.ops import chunk_attention_mask
from chunksft.ops.masks import block_ids


def block_of(p, prompt, size):
    return -1 if p < prompt else (p - prompt) // size


@pytest.mark.parametrize("prompt,seq_len,size", [(5, 23, 4), (8, 16, 4), (0, 9, 3), (13, 13, 16)])
def test_bd3_rules(prompt, seq_len, size):
    mask = chunk_attention_mask(torch.tensor([prompt]), seq_len, chunk_size=size, layout="bd3")[0]
    assert mask.shape == (2 * seq_len, 2 * seq_len)
    for q in range(2 * seq_len):
        q_clean, qp = q >= seq_len, q % seq_len
        bq = block_of(qp, prompt, size)
        for k in range(2 * seq_len):
            k_clean, kp = k >= seq_len, k % seq_len
            bk = block_of(kp, prompt, size)
            if q_clean:
                expected = k_clean and bk <= bq
            elif bq == -1:
                expected = k_clean and bk == -1
            else:
                expected = (k_clean and bk < bq) or (not k_clean and bk == bq)
            assert bool(mask[q, k]) == expected, (q, k)


def test_block_causal_and_bidirectional():
    prompts = torch.tensor([3, 6])
    causal = chunk_attention_mask(prompts, 14, chunk_size=4, layout="block_causal")
    blocks = block_ids(prompts, 14, 4)
    assert torch.equal(causal, blocks[:, None, :] <= blocks[:, :, None])
    assert chunk_attention_mask(prompts, 14, chunk_size=4, layout="bidirectional").all()


def test_padding_keys_invisible_and_rows_never_empty():
    prompts, lens = torch.tensor([3, 6]), torch.tensor([11, 14])
    for layout in ("bd3", "block_causal", "bidirectional"):
        mask = chunk_attention_mask(prompts, 14, chunk_size=4, layout=layout, seq_lens=lens)
        seq = mask.shape[-1] // (2 if layout == "bd3" else 1)
        key_pos = torch.arange(mask.shape[-1]) % seq
        assert not mask[0][:, key_pos >= 11].any()
        assert mask.any(dim=-1).all()


def test_bad_layout_and_chunk_size():
    with pytest.raises(ValueError, match="layout"):
        chunk_attention_mask(torch.tensor([1]), 4, layout="causal")
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_attention_mask(torch.tensor([1]), 4, chunk_size=0)
