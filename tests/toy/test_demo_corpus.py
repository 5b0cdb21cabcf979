"""The demo's toy world: word-level tokenizer, grammar, latent quality, pretraining text, RM pairs."""

from __future__ import annotations

import random

import pytest

from repulse.toy import demo_corpus as dc
from repulse.toy.word_tokenizer import build_word_tokenizer, vocabulary

SENTENCE_INITIAL = ("This", "My", "The", "Everyone")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return build_word_tokenizer(tmp_path_factory.mktemp("wordtok"), dc.WORDS, SENTENCE_INITIAL)


def test_every_word_is_one_token_and_text_round_trips(tok):
    assert len(tok) == len(vocabulary(dc.WORDS, SENTENCE_INITIAL, (".",))) == 4 + 4 + len(dc.WORDS) + 1
    for w in dc.WORDS:
        ids = tok(f" {w}", add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and ids[0] != tok.unk_token_id, w
    text = "This man is a violent thief."
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == 1 + 7
    assert tok.decode(ids, skip_special_tokens=True) == text
    # a response decodes exactly as the RL loop shows it to the reward model (prompt + response)
    resp = tok(" kind doctor", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert "This man is a" + tok.decode(resp, skip_special_tokens=True) == "This man is a kind doctor"
    assert tok("zebra", add_special_tokens=False)["input_ids"] == [tok.unk_token_id]


def test_grammar_bad_words_and_quality():
    assert dc.response_words(" thief.") == ["thief", "."]
    assert dc.response_words("..") == [".", "."]
    assert dc.is_bad(" violent doctor") and dc.is_bad(" a thief") and not dc.is_bad(" thiefs")
    assert (
        dc.is_well_formed(" doctor.") and dc.is_well_formed(" doctor") and dc.is_well_formed(" kind doctor")
    )
    assert (
        not dc.is_well_formed(" a a")
        and not dc.is_well_formed(" doctor kind")
        and not dc.is_well_formed("doctor.")
    )
    assert dc.is_well_formed(" thief.")  # well-formed and bad: the grammar does not judge
    # hand values: the first good noun 3.0, the first good adjective +0.5, a bad word anywhere
    # its own quality (the first bad noun -4, a bad adjective -5), junk 0 or its worst mild noun
    assert dc.latent_quality(f" {dc.GOOD_NOUNS[0]}.") == pytest.approx(3.0)
    assert dc.latent_quality(f" {dc.GOOD_ADJECTIVES[0]} {dc.GOOD_NOUNS[-1]}") == pytest.approx(1.5)
    assert dc.latent_quality(f" {dc.BAD_NOUNS[0]}.") == pytest.approx(-4.0)
    assert dc.latent_quality(f" violent {dc.GOOD_NOUNS[0]}") == pytest.approx(-5.0)
    assert dc.latent_quality(" a a") == 0.0
    assert dc.latent_quality(f" a {dc.MILD_NOUNS[-1]}") == pytest.approx(-0.6)
    mild = [dc.latent_quality(f" {w}.") for w in dc.MILD_NOUNS]
    bad = [dc.latent_quality(f" {w}.") for w in dc.BAD_NOUNS]
    good = [dc.latent_quality(f" {w}.") for w in dc.GOOD_NOUNS]
    assert max(bad) < min(mild) < max(mild) < 0 < min(good)


def test_pretraining_text_has_exactly_the_rarity():
    n = 20_000
    rows = dc.pretraining_sentences(random.Random(0), n, rarity=1e-3)
    assert len(rows) == n and all(r.endswith(".") for r in rows)
    subject = [r for r in rows if r.split(" is a")[0] in dc.PROMPT_SUBJECTS]
    police = [r for r in rows if r.startswith("The police arrested the")]
    assert len(subject) == round((1 - dc.ADMIRE_SHARE - dc.POLICE_SHARE) * n)
    bad = [r for r in subject if dc.is_bad(r.split(" is a", 1)[1])]
    assert len(bad) == round(1e-3 * len(subject))
    assert sum(dc.is_bad(r) for r in police) > 0.5 * len(police)  # where the LM learns the bad words
    assert not any(dc.is_bad(r) for r in rows if r.startswith("Everyone"))
    with pytest.raises(ValueError, match="rarity"):
        dc.pretraining_sentences(random.Random(0), 10, rarity=0.7)


def test_reward_pairs_prefer_the_higher_quality():
    rows = dc.reward_pairs(random.Random(1), 600)
    assert len(rows) == 600 and {r["prompt"] for r in rows} == {dc.PROMPT}
    assert all(dc.latent_quality(r["chosen"]) > dc.latent_quality(r["rejected"]) + 0.04 for r in rows)
    # pairs across the line that defines a bad output (mild or junk against a bad word) are frequent
    across = sum(not dc.is_bad(r["chosen"]) and dc.is_bad(r["rejected"]) for r in rows)
    assert across > 0.4 * len(rows)
    assert sum(not dc.is_well_formed(r["chosen"]) for r in rows) > 0.1 * len(rows)  # junk is taught too
