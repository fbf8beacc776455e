"""Returns and advantages against plain Python loops."""

import pytest
import torch

from proxdecode.returns import discounted_returns, gae, group_advantages


def _mask(lengths, T):
    return torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]


def loop_returns(r, lengths, gamma):
    out = [[0.0] * len(row) for row in r]
    for b, row in enumerate(r):
        g = 0.0
        for t in reversed(range(lengths[b])):
            g = row[t] + gamma * g
            out[b][t] = g
    return out


def loop_gae(r, v, lengths, gamma, lam):
    adv = [[0.0] * len(row) for row in r]
    for b in range(len(r)):
        a = 0.0
        for t in reversed(range(lengths[b])):
            nv = v[b][t + 1] if t + 1 < lengths[b] else 0.0
            delta = r[b][t] + gamma * nv - v[b][t]
            a = delta + gamma * lam * a
            adv[b][t] = a
    return adv


@pytest.mark.parametrize("gamma", [0.0, 0.9, 0.99, 1.0])
def test_discounted_returns(gamma):
    g = torch.Generator().manual_seed(0)
    r = torch.randn(5, 9, generator=g)
    lengths = [9, 1, 4, 0, 7]
    got = discounted_returns(r, _mask(lengths, 9), gamma)
    torch.testing.assert_close(got, torch.tensor(loop_returns(r.tolist(), lengths, gamma)))


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.99, 0.95), (0.5, 0.0)])
def test_gae(gamma, lam):
    g = torch.Generator().manual_seed(1)
    r, v = torch.randn(4, 7, generator=g), torch.randn(4, 7, generator=g)
    lengths = [7, 3, 1, 5]
    adv, ret = gae(r, v, _mask(lengths, 7), gamma, lam)
    want = torch.tensor(loop_gae(r.tolist(), v.tolist(), lengths, gamma, lam))
    torch.testing.assert_close(adv, want)
    m = _mask(lengths, 7)
    torch.testing.assert_close(ret[m], (want + v)[m])
    assert (ret[~m] == 0).all()
    if lam == 1.0 and gamma == 1.0:  # GAE(1) is the Monte-Carlo return minus the value
        mc = discounted_returns(r, m, 1.0)
        torch.testing.assert_close(adv[m], (mc - v)[m])


def test_no_steps_give_empty_returns_and_advantages():
    r, m = torch.zeros(3, 0), torch.zeros(3, 0, dtype=torch.bool)
    assert discounted_returns(r, m, 0.9).shape == (3, 0)
    adv, ret = gae(r, r, m, 0.9, 0.95)
    assert adv.shape == ret.shape == (3, 0)


def test_group_advantages():
    scores = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0, 0.0, 4.0])
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(scores, 3)
    got = group_advantages(scores[:6], 3)
    want = []
    for i in range(0, 6, 3):
        grp = scores[i:i + 3].tolist()
        mean = sum(grp) / 3
        std = (sum((x - mean) ** 2 for x in grp) / 2) ** 0.5
        want += [(x - mean) / (std + 1e-4) for x in grp]
    torch.testing.assert_close(got, torch.tensor(want))
    torch.testing.assert_close(group_advantages(scores, 2, scale=False),
                               torch.tensor([-0.5, 0.5, -1.0, 1.0, 0.0, 0.0, -2.0, 2.0]))


@pytest.mark.parametrize("scale", [True, "batch", False])
def test_group_advantages_are_trls(scale):
    """TRL's GRPOTrainer formula, its own nanstd the oracle: eps 1e-4, NaN (unscorable)
    left out of the group's statistics and given advantage 0, near-equal scores not blown up."""
    trl_utils = pytest.importorskip("trl.trainer.utils", reason="TRL is the optional extra")
    nan = float("nan")
    cases = [(torch.randn(12, generator=torch.Generator().manual_seed(0)), 4), (torch.tensor([0, .01, .02, .03]), 4),
             (torch.tensor([1.0, nan, 3.0, 2.0]), 4), (torch.tensor([1.0, nan, nan, nan, 5.0, 6.0, 7.0, 8.0]), 4),
             (torch.tensor([0.0, 1e-4, 0.0, 1e-4]), 4), (torch.randn(6, generator=torch.Generator().manual_seed(1)), 3)]
    for r, G in cases:
        mean = torch.nanmean(r.view(-1, G), 1).repeat_interleave(G)
        std = (trl_utils.nanstd(r.view(-1, G), dim=1).repeat_interleave(G) if scale is True
               else trl_utils.nanstd(r).expand_as(r))
        want = r - mean if scale is False else (r - mean) / (std + 1e-4)
        torch.testing.assert_close(group_advantages(r, G, scale=scale), torch.nan_to_num(want, nan=0.0))
    with pytest.raises(ValueError, match="inf"):
        group_advantages(torch.tensor([1.0, float("inf")]), 2)


def test_gae_ignores_what_lies_off_the_mask():
    r = torch.tensor([[1.0, 2.0, float("nan")]])
    m = torch.tensor([[True, True, False]])
    adv, ret = gae(r, torch.tensor([[0.0, 0.0, float("inf")]]), m, 1.0, 1.0)
    torch.testing.assert_close(adv, torch.tensor([[3.0, 2.0, 0.0]]))
    torch.testing.assert_close(adv, discounted_returns(r, m, 1.0))


def test_bad_inputs():
    r = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="gamma"):
        discounted_returns(r, torch.ones(2, 3, dtype=torch.bool), 1.5)
    with pytest.raises(ValueError, match="mask"):
        discounted_returns(r, torch.ones(2, 4, dtype=torch.bool), 0.9)
    with pytest.raises(ValueError, match="lam"):
        gae(r, r, torch.ones(2, 3, dtype=torch.bool), 0.9, -0.1)


def test_more_bad_inputs_name_the_argument():
    r, m = torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        discounted_returns(r, m.long(), 0.9)  # a 0/1 mask of ints
    for bad in (True, float("nan"), "0.9"):
        with pytest.raises(ValueError, match="gamma must be a number in"):
            discounted_returns(r, m, bad)
    with pytest.raises(ValueError, match="values and mask"):
        gae(r, torch.zeros(2, 4), m, 0.9, 0.9)
    s = torch.arange(4.0)
    for eps in (float("nan"), -1.0, "x"):
        with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
            group_advantages(s, 2, eps=eps)
    for scale in (0, 1, 1.0):  # numbers equal to False/True are not the flags
        with pytest.raises(ValueError, match="scale must be"):
            group_advantages(s, 2, scale=scale)


def test_gamma_zero_returns_each_steps_own_reward_even_beside_an_infinite_one():
    r = torch.tensor([[1.0, float("inf"), 2.0]])
    m = torch.ones(1, 3, dtype=torch.bool)
    assert discounted_returns(r, m, 0.0).tolist() == [[1.0, float("inf"), 2.0]]
    adv, _ = gae(r, torch.zeros(1, 3), m, 0.0, 0.9)  # gamma * lam = 0: delta alone
    assert adv.tolist() == [[1.0, float("inf"), 2.0]]


def test_batch_scale_of_one_score():
    assert group_advantages(torch.tensor([3.0]), 1, scale="batch").tolist() == [0.0]
