"""On-policy losses against hand computation, and a few updates that raise a rule reward."""

import math

import pytest
import torch

import proxdecode as pd
from proxdecode import rl

MASK = torch.tensor([[True, True, False], [True, False, False]])


def test_reinforce_loss_by_hand():
    logp = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -7.0, -7.0]], requires_grad=True)
    adv = torch.tensor([[2.0, -1.0, 5.0], [4.0, 3.0, 3.0]])
    loss = rl.reinforce_loss(logp, adv, MASK)
    want = -((2 * -1.0) + (-1 * -2.0) + (4 * -0.5)) / 3  # masked positions count for nothing
    assert loss.item() == pytest.approx(want)
    loss.backward()
    assert logp.grad[~MASK].abs().sum() == 0  # no gradient through masked positions
    assert logp.grad[0, 0].item() == pytest.approx(-2.0 / 3)


def test_ppo_loss_by_hand_clips_both_sides():
    old = torch.zeros(2, 3)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.0], [1.1, 1.0, 1.0]]))
    adv = torch.tensor([[1.0, -1.0, 0.0], [-2.0, 0.0, 0.0]])
    loss = rl.ppo_loss(logp, old, adv, MASK, clip=0.2)
    # r=1.5,A=1 -> min(1.5, 1.2)=1.2 ; r=0.5,A=-1 -> min(-0.5, -0.8)=-0.8 ; r=1.1,A=-2 -> min(-2.2,-2.2)
    want = -(1.2 - 0.8 - 2.2) / 3
    assert loss.item() == pytest.approx(want, rel=1e-6)


def test_losses_ignore_what_lies_off_the_mask():
    """-inf or NaN on masked positions (allowed by the input check) must not reach the loss."""
    mask = torch.tensor([[True, True, False]])
    logp = torch.tensor([[-1.0, -2.0, float("-inf")]])
    old = torch.tensor([[-1.1, -1.9, float("nan")]])
    adv = torch.tensor([[1.0, -1.0, float("nan")]])
    clean = torch.where(mask, logp, 0.0), torch.where(mask, old, 0.0), torch.where(mask, adv, 0.0)
    assert torch.isfinite(rl.ppo_loss(logp, old, adv, mask, 0.2))
    torch.testing.assert_close(rl.ppo_loss(logp, old, adv, mask, 0.2), rl.ppo_loss(*clean, mask, 0.2))
    torch.testing.assert_close(rl.kl_k3(logp, old, mask), rl.kl_k3(clean[0], clean[1], mask))
    logp = logp.clone().requires_grad_()
    (rl.ppo_loss(logp, old, adv, mask, 0.2) + rl.kl_k3(logp, old, mask) + rl.reinforce_loss(logp, adv, mask)).backward()
    assert torch.isfinite(logp.grad).all() and logp.grad[0, 2] == 0


def test_kl_k3_and_baseline_by_hand():
    logp = torch.tensor([[-1.0, -1.0, 0.0], [-2.0, 0.0, 0.0]])
    ref = torch.tensor([[-1.0, -2.0, 0.0], [-1.0, 0.0, 0.0]])
    d = [0.0, -1.0, 1.0]
    want = sum(math.exp(x) - x - 1 for x in d) / 3
    assert rl.kl_k3(logp, ref, MASK).item() == pytest.approx(want)
    returns = torch.tensor([[3.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    adv = rl.baseline_advantages(returns, MASK)
    assert adv.tolist() == [[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]]  # step 1 has one valid row


def test_importance_weights_and_sparse():
    class R:
        policy_logprobs = torch.log(torch.tensor([[0.2, 0.5, 0.1], [0.9, 0.1, 0.1]]))
        logprobs = torch.log(torch.tensor([[0.4, 0.25, 0.1], [0.9, 0.5, 0.1]]))
        mask = MASK
    w = rl.importance_weights(R, cap=1.0)
    assert torch.allclose(w, torch.tensor([[0.5, 1.0, 0.0], [1.0, 0.0, 0.0]]))
    r = torch.tensor([[1.0, 2.0, 7.0], [3.0, 5.0, 5.0]])
    assert rl.to_sparse(r, MASK).tolist() == [[0.0, 3.0, 0.0], [3.0, 0.0, 0.0]]


def test_bad_inputs():
    with pytest.raises(ValueError, match="must match mask"):
        rl.reinforce_loss(torch.zeros(2, 2), torch.zeros(2, 3), MASK)
    with pytest.raises(ValueError, match="empty"):
        rl.reinforce_loss(torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="advantages has NaN"):
        rl.reinforce_loss(torch.zeros(2, 3), torch.tensor([[float("nan")] * 3] * 2), MASK)
    with pytest.raises(ValueError, match="clip must be in"):
        rl.ppo_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), MASK, clip=1.5)


def _rollout(model, tok, rewards, **kw):
    enc = tok(["I like to eat", "Today is a"], return_tensors="pt", padding=True)
    return pd.generate(model, **enc, rewards=rewards, max_new_tokens=8, do_sample=True, seed=0, **kw)


def test_recomputed_logprobs_equal_the_rollouts(tiny):
    model, tok = tiny
    out = _rollout(model, tok, pd.Rewards(tok, [pd.rewards.EndsWith(".")]))
    with torch.no_grad():
        logp, ent = rl.completion_logprobs(model, out, entropy="loss")
    m = out.mask
    assert torch.allclose(logp[m], out.policy_logprobs[m], atol=1e-4)
    assert (ent[m] > 0).all()


def test_update_reports_the_policy_entropy_without_an_entropy_bonus(tiny):
    """``update``'s "entropy" is measured, not 0, when ``entropy_coef`` is 0: the mean over
    valid steps of H(softmax(logits)), the logits read from the rollout's own scores (top_k=0,
    T=1: the raw logits)."""
    import copy

    model, tok = tiny
    model = copy.deepcopy(model)
    enc = tok(["I like to eat", "Today is a"], return_tensors="pt", padding=True)
    out = pd.generate(model, **enc, rewards=pd.Rewards(tok, [pd.rewards.EndsWith(".")]), max_new_tokens=6,
                      do_sample=True, top_k=0, seed=0, output_scores=True)
    ent = torch.stack([-(torch.log_softmax(s, -1).exp() * torch.log_softmax(s, -1)).sum(-1) for s in out.scores], 1)
    want = float(ent[out.mask].mean())
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    got = rl.update(model, opt, out, algo="reinforce")["entropy"]
    assert got == pytest.approx(want, rel=1e-4) and got > 0


def test_rollout_from_another_model_is_refused(tiny):
    from transformers import LlamaConfig, LlamaForCausalLM

    model, tok = tiny
    out = _rollout(model, tok, pd.Rewards(tok, [pd.rewards.EndsWith(".")]))
    other = LlamaForCausalLM(LlamaConfig(vocab_size=1000, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
    with pytest.raises(ValueError, match="another model or tokenizer"):
        rl.completion_logprobs(other, out)


def test_nan_loss_keeps_the_weights(tiny):
    model, tok = tiny
    model = type(model)(model.config)
    model.load_state_dict(pd.random_model("tiny", seed=0)[0].state_dict())
    out = _rollout(model, tok, pd.Rewards(tok, [pd.rewards.EndsWith(".")]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out.returns = out.returns.clone()
    adv = torch.full_like(out.returns, float("inf"))
    for mode in (False, True):  # left in the mode it came in, also after a refused step
        model.train(mode)
        with pytest.raises((FloatingPointError, ValueError)):
            rl.update(model, opt, out, advantages=adv)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        assert model.training == mode
    with pytest.raises(ValueError, match="group_size >= 2"):  # one row: its own baseline, nothing to learn
        rl.train(model, tok, ["x"], None, 1, group_size=1)
    with pytest.raises(ValueError, match="lr must be a number in"):
        rl.train(model, tok, ["x"], None, 1, lr=2.0)
    with pytest.raises(ValueError, match="prompts is empty"):
        rl.train(model, tok, [], None, 1)


class StartsWithSpace(pd.rewards.Reward):
    """+1 for a token that starts a new word: a rule dense enough for a random model to learn."""

    kind = "table"
    default_name = "space"

    def bind(self, tokenizer):
        strings, _ = pd.rewards.token_strings(tokenizer)
        self._t = torch.tensor([float(s.startswith(" ")) for s in strings])

    def table(self):
        return self._t


@pytest.mark.parametrize("algo", ["reinforce", "ppo"])
def test_a_few_updates_raise_a_rule_reward(tiny, algo):
    """On the tiny model, fixed seeds: the mean reward of a simple rule goes up."""
    model, tok = tiny
    model = type(model)(model.config)
    model.load_state_dict(pd.random_model("tiny", seed=0)[0].state_dict())
    rewards = pd.Rewards(tok, [StartsWithSpace()])
    prompts = ["I like to eat", "Today is a"]

    def score():
        enc = tok(prompts, return_tensors="pt", padding=True)
        out = pd.generate(model, **enc, rewards=rewards, max_new_tokens=8, do_sample=True, seed=123,
                          num_return_sequences=16)
        return float(out.rewards.sum(1).mean())

    before = score()
    hist = rl.train(model, tok, prompts, rewards, steps=8, group_size=8, max_new_tokens=8, lr=1e-2,
                    algo=algo, progress=False)
    after = score()
    assert len(hist) == 8 and all(math.isfinite(h["loss"]) for h in hist)
    assert after > before + 0.5, (before, after)


def test_cli_train_logs_metrics(real, tmp_path):
    import json

    from proxdecode.cli import main

    log = tmp_path / "metrics.jsonl"
    main(["train", "Today is a", "--reward", "ends-with:.", "--steps", "2", "--group-size", "2",
          "--max-new-tokens", "4", "--train-layers", "1", "--lr", "1e-5", "--log", str(log)])
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1]
    for r in rows:
        assert {"reward", "kl", "entropy", "loss", "tokens_per_s", "rollout_s", "learn_s"} <= set(r)
        assert math.isfinite(r["loss"]) and r["tokens_per_s"] > 0 and r["entropy"] > 0  # measured
    with pytest.raises(SystemExit, match="--train-layers must be in"):
        main(["train", "x", "--reward", "ends-with", "--train-layers", "999", "--steps", "1"])


def test_baseline_ignores_nan_off_the_mask():
    """A NaN return past a row's end must not spoil the baseline of the rows still running."""
    returns = torch.tensor([[1.0, 2.0, 3.0], [-1.0, float("nan"), float("nan")]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    adv = rl.baseline_advantages(returns, mask)
    want = [[1.0 - 0.0, 0.0, 0.0], [-1.0 - 0.0, 0.0, 0.0]]  # by hand: b = [0, 2, 3]
    assert adv.tolist() == want
    sparse = rl.to_sparse(returns, mask)
    assert sparse.tolist() == [[0.0, 0.0, 6.0], [-1.0, 0.0, 0.0]]


@pytest.mark.parametrize("kw, says", [
    (dict(max_grad_norm=-1.0), "max_grad_norm must be a finite number >= 0"),
    (dict(max_grad_norm=float("nan")), "max_grad_norm must be a finite number >= 0"),
    (dict(max_grad_norm="1"), "max_grad_norm must be a finite number >= 0"),
    (dict(algo="ppo", clip=1.5), "clip must be in"),
    (dict(algo="reinforce", clip=-3), "clip must be in"),
    (dict(algo="grpo"), "algo must be"),
    (dict(kl_coef=0.1), "kl_coef > 0 needs ref_model"),
])
def test_update_settings_are_refused_before_any_forward(tiny, monkeypatch, kw, says):
    model, tok = tiny
    out = _rollout(model, tok, pd.Rewards(tok, [pd.rewards.EndsWith(".")]))
    monkeypatch.setattr(rl, "completion_logprobs", lambda *a, **k: pytest.fail("a forward ran"))
    with pytest.raises(ValueError, match=says):
        rl.update(model, torch.optim.SGD(model.parameters(), lr=0.0), out, **kw)


@pytest.mark.parametrize("kw, says", [
    (dict(algo="grpo"), "algo must be"),
    (dict(kl_coef=-1.0), "kl_coef must be a finite number"),
    (dict(entropy_coef=float("nan")), "entropy_coef must be a finite number"),
    (dict(kl_coef=0.1), "kl_coef > 0 needs ref_model"),
])
def test_train_settings_are_refused_before_any_rollout(tiny, monkeypatch, kw, says):
    import proxdecode.engine as engine

    model, tok = tiny
    monkeypatch.setattr(engine, "generate", lambda *a, **k: pytest.fail("a rollout ran"))
    with pytest.raises(ValueError, match=says):
        rl.train(model, tok, ["Hi"], pd.Rewards(tok, [pd.rewards.EndsWith(".")]), 1, progress=False, **kw)


@pytest.mark.parametrize("clip", [None, 0, "half"])
def test_max_grad_norm_clips_the_step_or_not(tiny, clip):
    """One SGD step at lr 1 moves the weights by the (clipped) gradient: its norm is the
    gradient's norm unclipped (None or 0, as HF's Trainer reads 0), half of it clipped there."""
    model, tok = tiny
    model = type(model)(model.config).eval()
    model.load_state_dict(pd.random_model("tiny", seed=0)[0].state_dict())
    out = _rollout(model, tok, pd.Rewards(tok, [pd.rewards.EndsWith(".")]))
    adv = torch.where(out.mask, torch.linspace(-1.0, 1.0, out.mask.numel()).view_as(out.mask), 0.0)
    kw = dict(algo="reinforce", advantages=adv)
    norm = rl.update(model, torch.optim.SGD(model.parameters(), lr=0.0), out, max_grad_norm=None, **kw)["grad_norm"]
    assert norm > 1e-3, "the test needs a gradient"
    max_grad_norm = norm / 2 if clip == "half" else clip
    before = [p.detach().clone() for p in model.parameters()]
    rl.update(model, torch.optim.SGD(model.parameters(), lr=1.0), out, max_grad_norm=max_grad_norm, **kw)
    moved = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before)))
    assert math.isclose(float(moved), max_grad_norm or norm, rel_tol=1e-3)
    assert not model.training


def test_update_and_train_restore_every_modules_mode(tiny):
    model, tok = tiny
    model = type(model)(model.config)
    model.load_state_dict(pd.random_model("tiny", seed=0)[0].state_dict())
    model.train()
    model.model.layers[0].eval()  # a caller's frozen block
    want = [m.training for m in model.modules()]
    out = _rollout(model, tok, pd.Rewards(tok, [pd.rewards.EndsWith(".")]))
    rl.update(model, torch.optim.SGD(model.parameters(), lr=0.0), out, algo="reinforce")
    assert [m.training for m in model.modules()] == want
    rl.train(model, tok, ["Hi", "Yo"], pd.Rewards(tok, [pd.rewards.EndsWith(".")]), 1, max_new_tokens=4,
             group_size=2, lr=1e-9, progress=False)
    assert [m.training for m in model.modules()] == want
