"""C++ chunk masking draws exactly what the counter-based reference draws for the same seed (and what
the Triton kernel draws in the interpreter): ids, labels, chunk flags and the compact layout."""
import pytest
import torch

from chunksft.ops import chunk_mask
from chunksft.ops.chunk_mask import chunk_mask_counter_cpp
from chunksft.ops.chunk_mask import chunk_mask_counter
from tests.ops.cases import MASK_ID, TOKEN_RATES, assert_same_mask, mask_batch
from tests.ops.cpp_support import require_cpp


@pytest.fixture(scope="module", autouse=True)
def extension():
    return require_cpp()


@pytest.mark.parametrize("token_rate", TOKEN_RATES)
@pytest.mark.parametrize("seed", [0, 1, 12345, 2 ** 62 + 17])
@pytest.mark.parametrize("chunk_size,prob,prompts", [
    (4, 0.3, None), (16, 0.05, None), (3, 1.0, None), (5, 0.0, None), (1, 0.5, None),
    (16, 1.0, (83, 61, 83, 40, 80)),  # no row has a whole chunk
])
def test_identical_to_counter_reference(seed, chunk_size, prob, prompts, token_rate):
    ids, prompts, attn = mask_batch(seed % 1000) if prompts is None else mask_batch(seed % 1000, prompts)
    kwargs = dict(seed=seed, chunk_size=chunk_size, mask_prob=prob, mask_id=MASK_ID, attention_mask=attn,
                  token_rate=token_rate)
    assert_same_mask(chunk_mask_counter_cpp(ids, prompts, **kwargs), chunk_mask_counter(ids, prompts, **kwargs))


@pytest.mark.parametrize("token_rate", TOKEN_RATES)
def test_identical_to_triton_interpreter(token_rate):
    pytest.importorskip("triton")
    from chunksft.ops.chunk_mask import chunk_mask_counter_triton

    ids, prompts, attn = mask_batch()
    for seed in (3, 99):
        kwargs = dict(seed=seed, chunk_size=4, mask_prob=0.3, mask_id=MASK_ID, attention_mask=attn,
                      token_rate=token_rate)
        cpp = chunk_mask_counter_cpp(ids, prompts, **kwargs)
        assert_same_mask(cpp, chunk_mask_counter(ids, prompts, **kwargs))
        assert_same_mask(cpp, chunk_mask_counter_triton(ids, prompts, **kwargs))


@pytest.mark.parametrize("token_rate", [(1.0, 1.0), (0.001, 1.0)])
def test_dispatcher_backend_cpp(token_rate):
    ids, prompts, attn = mask_batch()
    kwargs = dict(chunk_size=4, mask_prob=0.3, mask_id=MASK_ID, attention_mask=attn, token_rate=token_rate)
    out = chunk_mask(ids, prompts, backend="cpp", seed=5, **kwargs)
    ref = chunk_mask(ids, prompts, backend="eager", seed=5, **kwargs)
    for x, y in zip(out, ref):
        assert torch.equal(x, y)
    # Without a seed the fused draw takes one from the generator: reproducible under a seeded generator.
    a = chunk_mask(ids, prompts, backend="cpp", generator=torch.Generator().manual_seed(1), **kwargs)
    b = chunk_mask(ids, prompts, backend="cpp", generator=torch.Generator().manual_seed(1), **kwargs)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("token_rate", [(0.0, 1.0), (0.7, 0.3), (0.5, 1.5)])
def test_bad_token_rate(token_rate):
    ids, prompts, attn = mask_batch()
    with pytest.raises(ValueError, match="token_rate") as info:
        chunk_mask(ids, prompts, backend="cpp", seed=1, mask_id=MASK_ID, token_rate=token_rate)
    assert "\n" not in str(info.value)
