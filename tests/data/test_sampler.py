import pytest

from chunksft.data import StatefulDistributedSampler

N = 23


def run(world, epochs, *, drop_last, stop=None):
    """Per rank, the indices of `epochs` epochs; with stop=(epoch, k): checkpoint after k samples, resume anew."""
    orders = []
    for rank in range(world):
        sampler = StatefulDistributedSampler(range(N), world, rank, seed=7, drop_last=drop_last)
        seen = []
        for epoch in range(epochs):
            sampler.set_epoch(epoch)
            for i, index in enumerate(sampler):
                seen.append(index)
                if stop == (epoch, i + 1):
                    state = sampler.state_dict()
                    sampler = StatefulDistributedSampler(range(N), world, rank, seed=7, drop_last=drop_last)
                    sampler.load_state_dict(state)
                    sampler.set_epoch(epoch)  # the loop calls it again after resuming; same epoch keeps the position
                    seen.extend(sampler)
                    break
        orders.append(seen)
    return orders


@pytest.mark.parametrize("drop_last", [False, True])
def test_resume_continues_on_exactly_the_next_sample_on_two_ranks(drop_last):
    uninterrupted = run(2, 3, drop_last=drop_last)
    per_rank = 11 if drop_last else 12
    assert [len(o) for o in uninterrupted] == [3 * per_rank] * 2
    epoch0 = uninterrupted[0][:per_rank] + uninterrupted[1][:per_rank]
    assert len(set(epoch0)) == (22 if drop_last else N)  # ranks split the epoch
    assert uninterrupted[0][:per_rank] != uninterrupted[0][per_rank:2 * per_rank]  # reshuffled per epoch
    for stop in [(0, 1), (1, 5), (2, per_rank - 1)]:
        assert run(2, 3, drop_last=drop_last, stop=stop) == uninterrupted


def test_resume_on_a_different_world_size_covers_exactly_the_rest():
    order = list(StatefulDistributedSampler(range(N), 1, 0, seed=3))  # the epoch's global order
    two = [StatefulDistributedSampler(range(N), 2, rank, seed=3) for rank in range(2)]
    firsts = [[next(it) for _ in range(4)] for it in map(iter, two)]
    assert sorted(firsts[0] + firsts[1]) == sorted(order[:8])
    one = StatefulDistributedSampler(range(N), 1, 0, seed=3)
    one.load_state_dict(two[0].state_dict())
    assert list(one) == order[8:]


def test_state_mismatch_is_reported():
    state = StatefulDistributedSampler(range(N), 1, 0, seed=1).state_dict()
    with pytest.raises(ValueError, match="seed=1 but this run has 2"):
        StatefulDistributedSampler(range(N), 1, 0, seed=2).load_state_dict(state)
