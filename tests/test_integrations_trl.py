"""TRL bridge: the GRPO reward function against pd.generate's own rewards, inside GRPOTrainer."""

import copy

import pytest
import torch

import proxdecode as pd
from proxdecode.integrations.trl import ppo_token_rewards, reward_function


def seed_get_reward(text):
    if not text.endswith('.'):
        return -1
    if "apple" in text and "orange" in text:
        return 1
    return 0


def seed_rules(tok):
    R = pd.rewards
    return pd.Rewards(tok, [R.EndsWith("."), R.Keywords(["apple", "orange"], require_all=True, only_if_ends_with=".")])


def test_reward_function_equals_generate_rewards_and_the_seed_rule(tiny):
    model, tok = tiny
    rewards = seed_rules(tok)
    enc = tok(["I like to eat", "Today is a"], return_tensors="pt", padding=True)
    out = pd.generate(model, **enc, rewards=rewards, steer=2.0, max_new_tokens=10, do_sample=True, seed=0,
                      num_return_sequences=4)
    ids = [out.tokens[b, : int(out.mask[b].sum())].tolist() for b in range(out.tokens.shape[0])]
    fn = reward_function(rewards)
    got = fn(prompts=["p"] * len(ids), completions=[tok.decode(i) for i in ids], completion_ids=ids)
    assert got == pytest.approx(out.rewards.sum(1).tolist(), abs=1e-6)
    texts = [tok.decode(i, skip_special_tokens=True) for i in ids]
    assert got == [float(seed_get_reward(t)) for t in texts]
    # from text alone (no completion_ids), as for a dataset of strings
    assert fn(prompts=["p"], completions=["I ate an apple and an orange."]) == [1.0]
    assert fn(prompts=["p"], completions=["I ate an apple"]) == [-1.0]


def test_reward_function_reads_the_prompts_as_generate_does(tiny):
    """Families that read the prompt (a sentence start after "It rained.", repeats of prompt
    n-grams) score TRL's completions as pd.generate scored them, plain and chat prompts."""
    model, tok = tiny
    R = pd.rewards
    rewards = pd.Rewards(tok, [R.Capitalization(), R.Repetition(include_prompt=True)])
    prompts = ["It rained all day.", "The end is near"]
    enc = tok(prompts, return_tensors="pt", padding=True)
    out = pd.generate(model, **enc, rewards=rewards, max_new_tokens=8, do_sample=True, seed=0, num_return_sequences=2)
    ids = [out.tokens[b, : int(out.mask[b].sum())].tolist() for b in range(4)]
    fn = reward_function(rewards)
    got = fn(prompts=[p for p in prompts for _ in range(2)], completions=[tok.decode(i) for i in ids],
             completion_ids=ids)
    assert got == pytest.approx(out.rewards.sum(1).tolist(), abs=1e-6)
    chat = [[{"role": "user", "content": p}] for p in prompts for _ in range(2)]
    enc = tok([tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chat[::2]],
              return_tensors="pt", padding=True, add_special_tokens=False)
    out = pd.generate(model, **enc, rewards=rewards, max_new_tokens=8, do_sample=True, seed=0, num_return_sequences=2)
    ids = [out.tokens[b, : int(out.mask[b].sum())].tolist() for b in range(4)]
    got = fn(prompts=chat, completions=[[{"role": "assistant", "content": tok.decode(i)}] for i in ids],
             completion_ids=ids)
    assert got == pytest.approx(out.rewards.sum(1).tolist(), abs=1e-6)


def test_an_empty_completion_gets_its_terminal_rewards(tiny):
    """'' does not end with '.', is shorter than 3 tokens, and fn('') is still fn's value."""
    _, tok = tiny
    R = pd.rewards
    fn = reward_function(pd.Rewards(tok, [R.EndsWith("."), R.Length(min_tokens=3),
                                          R.TextReward(lambda text: len(text) + 0.5, name="chars")]))

    def oracle(text):  # the three rules in plain Python, on the text and its token count
        n = len(tok.encode(text, add_special_tokens=False))
        return (0.0 if text.endswith(".") else -1.0) - (n < 3) + len(text) + 0.5

    for texts in ([""], ["", "It is done now.", "x"]):  # all empty (no step at all), and mixed
        assert fn(prompts=["Hi"] * len(texts), completions=texts) == [oracle(t) for t in texts]


def test_reward_function_refuses_model_kinds(tiny):
    _, tok = tiny
    with pytest.raises(ValueError, match="policy's logits"):
        reward_function(pd.Rewards(tok, [pd.rewards.Fluency()]))


def test_ppo_token_rewards_layout():
    class R:
        mask = torch.tensor([[True, True, False], [True, False, False]])
        rewards = torch.tensor([[1.0, 2.0, 0.0], [-1.0, 0.0, 0.0]])
        policy_logprobs = torch.tensor([[-1.0, -2.0, 0.0], [-3.0, 0.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, 0.0], [-3.0, 0.0, 0.0]])
    out = ppo_token_rewards(R, ref, kl_coef=0.1)
    assert torch.allclose(out, torch.tensor([[-0.05, 0.1 + 3.0, 0.0], [-1.0, 0.0, 0.0]]))


def test_grpo_trainer_runs_with_the_reward_function(tiny, tmp_path):
    trl = pytest.importorskip("trl", reason="TRL is the optional extra: pip install -e .[trl]")
    from datasets import Dataset

    model, tok = tiny
    # a fresh copy, config included (TRL's gradient checkpointing sets config.use_cache=False):
    # the session fixture stays untouched
    model = type(model)(copy.deepcopy(model.config))
    model.load_state_dict(pd.random_model("tiny", seed=0)[0].state_dict())
    data = Dataset.from_dict({"prompt": ["I like to eat", "Today is a", "My favourite fruit", "Yesterday"]})
    cfg = trl.GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4,
                         max_completion_length=8, max_steps=2, learning_rate=1e-4, report_to=[],
                         logging_steps=1, save_strategy="no", use_cpu=True, bf16=False)
    # the seed rule is -1 for nearly every random-model text (no advantage, no gradient), so a
    # text-length term makes the scores differ within each group
    rewards = pd.Rewards(tok, seed_rules(tok).families + [pd.rewards.TextReward(len, weight=0.01, name="chars")])
    trainer = trl.GRPOTrainer(model=model, reward_funcs=[reward_function(rewards, "seed_rule")],
                              args=cfg, train_dataset=data, processing_class=tok)
    before = [p.detach().clone() for p in model.parameters()]
    trainer.train()
    logs = [h for h in trainer.state.log_history if "reward" in h or "rewards/seed_rule/mean" in h]
    assert logs, trainer.state.log_history
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # it learned something


def test_ppo_token_rewards_zero_off_the_mask_and_checked_arguments():
    class R:
        mask = torch.tensor([[True, True, False]])
        rewards = torch.tensor([[1.0, 2.0, float("nan")]])
        policy_logprobs = torch.tensor([[-1.0, -2.0, float("-inf")]])
    ref = torch.tensor([[-1.5, -1.0, float("-inf")]])
    out = ppo_token_rewards(R, ref, kl_coef=0.1)
    assert torch.allclose(out, torch.tensor([[-0.05, 0.1 + 3.0, 0.0]]))  # hand layout; 0 past the end
    for bad in (-1.0, float("nan"), "0.1", True):
        with pytest.raises(ValueError, match="kl_coef must be a finite number >= 0"):
            ppo_token_rewards(R, ref, kl_coef=bad)
    with pytest.raises(ValueError, match="kl_coef > 0 needs ref_logprobs"):
        ppo_token_rewards(R, None, kl_coef=0.5)
    assert torch.equal(ppo_token_rewards(R), torch.tensor([[0.0, 3.0, 0.0]]))
