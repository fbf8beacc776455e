"""Sentiment (TextBlob lexicon, per token) and Topic (embedding similarity) rewards.

Sentiment is checked against TextBlob itself: exact values on short phrases, exact
potential differences for sampled candidates, and the Spearman correlation of a row's
summed rewards with ``TextBlob(text).sentiment.polarity`` on realistic text.
"""

import random
import time

import pytest
import torch
from scipy.stats import spearmanr
from textblob import TextBlob

import proxdecode as pd
from proxdecode.rewards.sentiment import Sentiment
from proxdecode.rewards.topic import Topic

from test_rewards import teacher_force


def polarity(text):
    return TextBlob(text).sentiment.polarity


PHRASES = ["good", "not good", "very good", "bad", "not bad", "very bad", "very very good", "not very good",
           "really not good", "never good", "no good", "not a good", "good!", "Good!!", "bad :)", "great :(",
           "Terribly awful", "extremely happy", "The end.", "", "happy happy sad", "GOOD", "not. good",
           "very, good", "so good", "quite bad", "truly amazing", "nice :D", "ok :-)", "I love it <3", "bad =(",
           "UNBELIEVABLY GOOD", "NEVER happy", "x :P !", "well-off", "top-notch!!", "I'm not sure it's good",
           "isn't good", "It is good.Bad", "e.g. good", "good...", "very!good", ":("]

SENTENCES = [
    # positive, plain and intensified
    "I love this place, the food is delicious and the staff are friendly.",
    "What a wonderful day it has been!",
    "The movie was absolutely fantastic and the acting was superb.",
    "She is a very kind and generous person.",
    "This is the best coffee I have ever had!!",
    "The hotel room was clean, spacious and comfortable.",
    "Our trip to the mountains was amazing.",
    "He gave a brilliant, thought-provoking talk.",
    "The new update is really good and surprisingly fast.",
    "I am so happy with my purchase :)",
    "The garden looks beautiful in the spring.",
    "Thank you for the lovely gift, it was perfect.",
    "It's an excellent book with a clever plot.",
    "The children were delighted with the show.",
    "Great service, fair prices, highly recommended!",
    "The concert was incredibly exciting.",
    "What a pleasant surprise.",
    "The soup was warm and tasty.",
    "Everything went smoothly and the results were impressive.",
    "I'm glad we met, you are an open-minded and interesting person.",
    # negative, plain and intensified
    "The service was terrible and the waiter was rude.",
    "This is the worst movie I have seen in years.",
    "I hate waiting in long lines.",
    "The room was dirty and the bed was uncomfortable.",
    "What a horrible, disgusting meal.",
    "He was very angry and upset about the delay.",
    "The instructions were confusing and useless.",
    "The weather has been awful all week.",
    "Her answer was stupid and completely wrong.",
    "I feel sad and lonely tonight :(",
    "The software is slow, buggy and frustrating.",
    "It was a painful and boring lecture.",
    "The ending was disappointing.",
    "That is an ugly building.",
    "The noise was extremely annoying!",
    "Their customer support is pathetic.",
    "The food was cold and bland.",
    # negations
    "The food was not good.",
    "I am not happy with the result.",
    "It was not bad at all.",
    "This is not a great idea.",
    "The hotel was never clean.",
    "There is no good reason to stay.",
    "I don't think it is terrible.",
    "The film wasn't very interesting.",
    "He is not very smart, but he is kind.",
    "Not the best day, not the worst either.",
    "The plan is really not good.",
    # mixed
    "The food was excellent, but the service was slow and rude.",
    "The design is beautiful, although the battery life is poor.",
    "Good idea, bad execution.",
    "I liked the beginning but the end was awful.",
    "The price is high, yet the quality is great.",
    "Some parts were funny, others were dull.",
    "It is a small but cozy apartment.",
    # neutral
    "The meeting is scheduled for Tuesday at 3 pm.",
    "Please send me the report by email.",
    "The train leaves from platform 4.",
    "He walked to the store and bought some milk.",
    "The capital of France is Paris.",
    "Water boils at 100 degrees Celsius.",
    "She opened the window and sat down.",
    "The package contains two cables and a manual.",
    "We discussed the budget for next year.",
    "The cat is sleeping on the sofa.",
    # harder spellings: capitals, multi-token words, exclamations, numbers, hyphens
    "Unbelievably RUDE staff!!!",
    "Absolutely wonderful!!! Highly recommended.",
    "The well-known chef served a mouth-watering dessert.",
    "Terribly slow, 2/10, would not recommend.",
    "A truly heartwarming story.",
    "Surprisingly, the sequel is better than the original.",
]


@pytest.fixture(scope="module")
def sentiment_rewards(tiny):
    _, tok = tiny
    return pd.Rewards(tok, [Sentiment()]), tok


def totals_vs_textblob(sentiment_rewards, texts):
    rewards, tok = sentiment_rewards
    totals, ids = teacher_force(rewards, tok, texts)
    got = totals["sentiment"].tolist()
    want = [polarity(tok.decode(i, skip_special_tokens=True)) for i in ids]
    return got, want


def test_tables_ignore_the_padding_a_tokenizer_call_left_behind(tiny):
    """``tok(..., padding=True)`` leaves padding switched on in the fast backend; spelling the
    lexicon's forms must not see it (it padded "GOOD" with <|im_end|> and lost the word)."""
    from proxdecode.rewards.sentiment import _build

    _, tok = tiny
    tok.backend_tokenizer.no_padding()
    clean = _build(tok)
    tok(["a b c", "d"], padding=True)
    assert tok.backend_tokenizer.padding is not None, "the state this test is about"
    padded = _build(tok)
    for k in ("root", "start", "deg", "edge_tok", "edge_kid", "edge_adopt", "uidx"):
        assert torch.equal(padded[k], clean[k]), k
    for f, x in clean["D"].items():
        assert torch.equal(padded["D"][f], x), f


def test_sentiment_equals_textblob_on_short_phrases(sentiment_rewards):
    got, want = totals_vs_textblob(sentiment_rewards, PHRASES)
    assert dict(zip(PHRASES, got)) == pytest.approx(dict(zip(PHRASES, want)), abs=1e-6)
    values = dict(zip(PHRASES, got))
    assert values["good"] == pytest.approx(0.7)
    assert values["not good"] == pytest.approx(-0.35)
    assert values["very good"] == pytest.approx(0.91)


def test_sentiment_tracks_textblob_on_sentences(sentiment_rewards):
    assert len(SENTENCES) >= 60
    got, want = totals_vs_textblob(sentiment_rewards, SENTENCES)
    rho = spearmanr(got, want).statistic
    exact = sum(abs(g - w) < 1e-6 for g, w in zip(got, want))
    # what the word handling buys: a stateless table (each token that is a lexicon word on its
    # own scores its polarity; mean over them) misses negations, intensifiers, "!" and split words
    from textblob.en import sentiment as lexicon
    _, tok = sentiment_rewards
    naive = []
    for text in SENTENCES:
        ps = [lexicon[w][None][0] for w in (tok.decode([i]).strip().lower()
                                            for i in tok.encode(text, add_special_tokens=False)) if w in lexicon]
        naive.append(sum(ps) / len(ps) if ps else 0.0)
    rho_naive = spearmanr(naive, want).statistic
    print(f"\nsentiment vs TextBlob on {len(SENTENCES)} sentences: Spearman {rho:.4f} ({exact} exact); "
          f"a stateless token table: {rho_naive:.4f}")
    assert rho >= 0.8 and rho > rho_naive  # the fidelity target
    assert exact == len(SENTENCES), [(s, g, w) for s, g, w in zip(SENTENCES, got, want) if abs(g - w) >= 1e-6]
    assert min(want) < -0.5 and max(want) > 0.5  # the set spans the scale


def test_every_candidate_scores_a_polarity_difference(sentiment_rewards):
    """The [B, V] score, not only the chosen token's: Phi(prefix + a) - Phi(prefix) for sampled a."""
    rewards, tok = sentiment_rewards
    prefixes = ["", "The movie was", "It was very", "I am not", "Really", "so happy.", "well", "open-", "Ter"]
    ids = [tok.encode(p, add_special_tokens=False) for p in prefixes]
    B, T = len(ids), max(map(len, ids))
    run = rewards.start(len(tok), B, "cpu")
    for t in range(T):
        run.score(torch.zeros(B, len(tok)))
        run.record(torch.tensor([r[t] if t < len(r) else 0 for r in ids]), torch.tensor([t < len(r) for r in ids]))
    score = run.score(torch.zeros(B, len(tok)))  # [B, V]
    assert score.shape == (B, len(tok))
    random.seed(0)
    cands = random.sample(range(len(tok)), 300) + list(range(17)) + [
        tok.encode(w, add_special_tokens=False)[0] for w in [" good", " bad", "ly", "ribly", "minded", "!", "!!", " :)",
                                                            " not", ",", ".\n", "_%", " very", "'s"]]
    bad = []
    for b in range(B):
        base = polarity(tok.decode(ids[b]))
        for a in cands:
            want = polarity(tok.decode(ids[b] + [a], skip_special_tokens=True)) - base
            if abs(score[b, a].item() - want) > 1e-5:
                bad.append((prefixes[b], tok.decode([a]), score[b, a].item(), want))
    assert not bad, bad


def test_sentiment_steering_raises_polarity(tiny):
    model, tok = tiny
    rewards = pd.Rewards(tok, [Sentiment()])
    enc = tok(["Today is a"] * 16, return_tensors="pt")
    kw = dict(max_new_tokens=16, do_sample=True, top_k=0, rewards=rewards, seed=list(range(16)))
    means = []
    for steer in (0.0, 4.0):
        out = pd.generate(model, **enc, steer=steer, **kw)
        texts = [tok.decode(out.tokens[b][out.mask[b]], skip_special_tokens=True) for b in range(16)]
        pol = [polarity(t) for t in texts]
        torch.testing.assert_close(out.reward_components["sentiment"].sum(1), torch.tensor(pol), atol=1e-5, rtol=0)
        means.append(sum(pol) / 16)
    print(f"\nmean TextBlob polarity of 16 tiny-model rows, steer 0 vs 4: {means}")
    assert means[1] > means[0] + 0.1, means


def test_sentiment_on_real_model_continuations(real):
    """Rows decoded by the engine: recorded rewards sum to TextBlob's polarity of each completion."""
    model, tok = real
    prompts = ["The restaurant was", "Honestly, the movie", "The weather today is", "I think this phone is"]
    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
    t0 = time.perf_counter()
    out = pd.generate(model, **enc, max_new_tokens=20, do_sample=True, top_p=0.95, num_return_sequences=4,
                      rewards=pd.Rewards(tok, [Sentiment()]), steer=1.0, seed=list(range(4)))
    got = out.reward_components["sentiment"].sum(1).tolist()
    want = [polarity(tok.decode(out.tokens[b][out.mask[b]], skip_special_tokens=True)) for b in range(len(got))]
    rho = spearmanr(got, want).statistic
    exact = sum(abs(g - w) < 1e-5 for g, w in zip(got, want))
    print(f"\nreal-model continuations: {len(got)} rows ({sum(w != 0 for w in want)} with non-zero polarity), "
          f"Spearman {rho:.4f}, exact {exact}/{len(got)}, "
          f"{time.perf_counter() - t0:.1f} s")
    assert rho >= 0.8 and exact >= 0.9 * len(got)


def test_documented_gaps(sentiment_rewards):
    """The module docstring's known gaps, pinned: each differs from TextBlob as described."""
    rewards, tok = sentiment_rewards
    texts = ["so sad :'(", "great (!)", "good!:)"]  # quoted emoticon, sarcasm, emoticon glued to a word
    got, want = totals_vs_textblob(sentiment_rewards, texts)
    assert got == pytest.approx([-0.5, 1.0, 0.875]) and want == pytest.approx([-0.75, 0.4, 0.6875])
    # "terrible" spelled " terr" + "ible" instead of its own token " terrible" is an unknown word
    ids = [tok.encode(" terr", add_special_tokens=False) + tok.encode("ible", add_special_tokens=False)]
    assert tok.decode(ids[0]) == " terrible" and len(ids[0]) == 2
    run = rewards.start(len(tok), 1, "cpu")
    total = 0.0
    for t in ids[0]:
        total += run.score(torch.zeros(1, len(tok)))[0, t].item()
        run.record(torch.tensor([t]), torch.tensor([True]))
    assert total == 0.0 and polarity(" terrible") == -1.0
    # mixed case, a leading "...", emoticons glued to punctuation, a word or a spaced ": )",
    # and TextBlob's case-sensitive ":D"
    # and the contraction split's "do" + "n", one word longer than "don" here
    texts = ["so hAppY", "It was ...terrible", "See you :)!", "good:)", "It was :good", "x : ) y", "great :d",
             "VERY don't fine"]
    got, want = totals_vs_textblob(sentiment_rewards, texts)
    assert got == pytest.approx([0.0, -1.0, 0.0, 0.7, 0.0, 0.0, 0.9, 0.308333], abs=1e-5)
    assert want == pytest.approx([0.8, 0.0, 0.625, 0.6, 0.7, 0.5, 0.8, 0.541667], abs=1e-5)


def test_sentiment_bad_arguments():
    with pytest.raises(ValueError, match="weight"):
        Sentiment(weight=float("inf"))
    with pytest.raises(ValueError, match="weight"):
        Sentiment(weight="1")


# ---------------------------------------------------------------------------------- Topic

def test_topic_own_tokens_rank_first(tiny):
    _, tok = tiny
    words = ["apple", "banana"]
    gen = torch.Generator().manual_seed(0)
    topic = Topic(words, embeddings=torch.randn(len(tok) + 64, 512, generator=gen))  # rows past V: padding
    pd.Rewards(tok, [topic])
    table = topic.table()
    assert table.shape == (len(tok),) and table.dtype == torch.float32
    own = {t for w in words for f in (w, " " + w) for t in tok.encode(f, add_special_tokens=False)}
    assert set(table.topk(len(own)).indices.tolist()) == own
    assert (table >= 0).all() and (table <= 1 + 1e-6).all()
    assert (table[:17] == 0).all()  # special tokens


def test_topic_from_embeddings_matches_model(tiny):
    model, tok = tiny
    emb = model.get_input_embeddings().weight.detach()
    a, b = Topic("fruit", model=model), Topic(["fruit"], embeddings=emb.clone(), name="topic2")
    pd.Rewards(tok, [a, b])
    torch.testing.assert_close(a.table(), b.table())


def test_topic_fruit_on_real_model(real):
    model, tok = real
    topic = Topic(["fruit"], model=model)
    pd.Rewards(tok, [topic])
    table = topic.table()
    score = {w: table[tok.encode(w, add_special_tokens=False)[0]].item()
             for w in [" apple", " banana", " orange", " car", " computer", " the"]}
    fruit, other = (" apple", " banana", " orange"), (" car", " computer", " the")
    assert min(score[w] for w in fruit) > max(score[w] for w in other), score


RELATED = {"fruit": " apple banana orange grape pear mango cherry lemon peach strawberry",
           "music": " guitar piano song melody concert band drum singer jazz rhythm",
           "weather": " rain snow sunny cloud storm wind temperature forecast cold hot"}
OTHERS = " the and of car house table walk happy because street mother paper river window city old said"


def test_topic_ranks_related_words_above_others(real):
    """AUC of related words against other topics' and common words (the module docstring's measure)."""
    model, tok = real
    first = lambda w: tok.encode(" " + w, add_special_tokens=False)[0]  # noqa: E731
    aucs = {}
    for name, words in RELATED.items():
        topic = Topic(name, model=model)
        pd.Rewards(tok, [topic])
        table = topic.table()
        pos = table[[first(w) for w in words.split()]]
        others = [w for n, ws in RELATED.items() if n != name for w in ws.split()] + OTHERS.split()
        neg = table[[first(w) for w in others]]
        aucs[name] = (pos[:, None] > neg[None, :]).float().mean().item()
    print(f"\ntopic AUC (related vs others): {aucs}")
    assert min(aucs.values()) >= 0.85, aucs


def test_topic_steering_raises_topic_words(real):
    model, tok = real
    words = ["fruit", "apple", "banana", "orange", "fruits", "apples", "bananas", "oranges", "berries", "mango"]
    rewards = pd.Rewards(tok, [Topic(["fruit"], model=model)])
    enc = tok(["I like to eat"] * 8, return_tensors="pt")
    kw = dict(max_new_tokens=16, do_sample=True, top_k=50, rewards=rewards, seed=list(range(8)))
    rates = []
    for steer in (0.0, 10.0):
        out = pd.generate(model, **enc, steer=steer, **kw)
        texts = [tok.decode(out.tokens[b][out.mask[b]], skip_special_tokens=True).lower() for b in range(8)]
        rates.append(sum(w.strip(".,;:!?") in words for t in texts for w in t.split()))
    print(f"\ntopic-word count in 8 continuations of 16 tokens, steer 0 vs 10: {rates}")
    assert rates[1] >= rates[0] + 3, rates


def test_topic_bad_arguments(tiny):
    model, tok = tiny
    emb = model.get_input_embeddings().weight.detach()
    with pytest.raises(ValueError, match="model= or embeddings="):
        Topic(["fruit"])
    with pytest.raises(ValueError, match="model= or embeddings="):
        Topic(["fruit"], model=model, embeddings=emb)
    for words in ([], [""], ["  "], [3], None):
        with pytest.raises(ValueError, match="words"):
            Topic(words, model=model)
    with pytest.raises(ValueError, match="weight"):
        Topic(["fruit"], model=model, weight=float("nan"))
    with pytest.raises(ValueError, match="embeddings"):
        Topic(["fruit"], embeddings=torch.zeros(10))
    with pytest.raises(ValueError, match="embeddings"):
        Topic(["fruit"], embeddings=torch.tensor([[1.0, float("nan")]]).repeat(len(tok), 1))
    with pytest.raises(ValueError, match="embeddings=.*100 embedding rows"):
        pd.Rewards(tok, [Topic(["fruit"], embeddings=torch.randn(100, 8))])
    with pytest.raises(ValueError, match="words.*no ordinary tokens"):
        pd.Rewards(tok, [Topic(["<|im_end|>"], model=model)])
    with pytest.raises(TypeError, match="model"):
        Topic(["fruit"], model="SmolLM2")
