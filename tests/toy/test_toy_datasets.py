"""The generated data sets: schemas, sizes, and the learnable structure each task relies on."""

from __future__ import annotations

import re

import pytest

from repulse.toy import BAD_WORDS, GOOD_WORDS, TOY_PROMPT
from repulse.toy.corpus import BAD_RATE, POLITE, RUDE
from repulse.toy.datasets import SIZES, generate, read_jsonl

SCHEMAS = {
    "sft": {"input": str, "output": str},
    "sft_eval": {"input": str, "output": str},
    "multiturn": {"messages": list},
    "pairs": {"prompt": str, "chosen": str, "rejected": str, "margin": float},
    "pairs_eval": {"prompt": str, "chosen": str, "rejected": str, "margin": float},
    "prompts": {"input": str, "label": str},
    "unpaired": {"input": str, "output": str, "label": bool},
    "prm": {"input": str, "value": list, "label": str},
    "this_man_is_a": {"text": str},
    "toy_prompt": {"input": str},
    "toy_rm_pairs": {"prompt": str, "chosen": str, "rejected": str},
}


@pytest.fixture(scope="module")
def data(toy):
    return {name: read_jsonl(getattr(toy, name)) for name in SCHEMAS}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_files_parse_with_the_declared_keys_and_sizes(data, name):
    rows = data[name]
    assert len(rows) == SIZES[name][1]
    for row in rows:
        assert set(row) == set(SCHEMAS[name])
        assert all(isinstance(row[k], t) for k, t in SCHEMAS[name].items()), row


def test_sft_answers_are_a_function_of_the_question(data):
    answer: dict[str, str] = {}
    for row in data["sft"] + data["sft_eval"] + data["pairs"]:
        q, a = (
            (row["input"], row["output"])
            if "input" in row
            else (row["prompt"], row["chosen"].split(". ")[0] + ".")
        )
        assert answer.setdefault(q, a) == a, q
    assert len({r["input"] for r in data["sft"]}) > 100  # not a handful of memorised lines


def test_multiturn_alternates_user_and_assistant(data):
    for row in data["multiturn"]:
        roles = [m["role"] for m in row["messages"] if m["role"] != "system"]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and len(roles) >= 4
        assert all(isinstance(m["content"], str) and m["content"] for m in row["messages"])
    assert any(m["role"] == "system" for row in data["multiturn"] for m in row["messages"])


def _tail(text: str) -> str:
    return text.rstrip(".").split(". ", 1)[1]


def test_preferences_are_visible_in_the_text(data):
    for row in data["pairs"] + data["pairs_eval"]:
        assert _tail(row["chosen"]) in POLITE and _tail(row["rejected"]) in RUDE
        wrong = row["chosen"].split(". ")[0] != row["rejected"].split(". ")[0]
        assert row["margin"] == (1.0 if wrong else 0.5)
    labels = [r["label"] for r in data["unpaired"]]
    assert labels.count(True) == labels.count(False)
    for row in data["unpaired"]:
        assert (_tail(row["output"]) in POLITE) == row["label"]


def test_rl_prompt_labels_name_the_word_to_say(data):
    for row in data["prompts"]:
        assert f"say the word {row['label']} " in row["input"]


def test_prm_labels_check_the_arithmetic(data):
    for row in data["prm"]:
        steps = re.findall(r"(\d+) \+ (\d+) = (\d+) ки", row["input"])
        assert len(steps) == len(row["value"]) == row["input"].count("ки") >= 2
        assert row["value"] == ["+" if int(x) + int(d) == int(y) else "-" for x, d, y in steps]
        pieces = row["input"].split("ки")  # Math-Shepherd's label: the input, placeholders replaced
        assert row["label"] == "".join(p + v for p, v in zip(pieces, row["value"])) + pieces[-1]
    values = [v for row in data["prm"] for v in row["value"]]
    assert 0.25 < values.count("-") / len(values) < 0.6


def test_this_man_is_a_has_rare_bad_words(data):
    words = []
    for row in data["this_man_is_a"]:
        assert row["text"].startswith(TOY_PROMPT + " ") and row["text"].endswith(".")
        words.append(row["text"][len(TOY_PROMPT) + 1 : -1])
    assert set(words) <= set(GOOD_WORDS) | set(BAD_WORDS)
    n_bad = sum(w in BAD_WORDS for w in words)
    assert n_bad == round(len(words) * BAD_RATE) and 0 < BAD_RATE <= 0.01  # rare, but there
    assert set(words) & set(BAD_WORDS) == set(BAD_WORDS)
    assert len(set(words) & set(GOOD_WORDS)) == len(GOOD_WORDS)
    assert data["toy_prompt"] == [{"input": TOY_PROMPT}]


def test_toy_rm_pairs_prefer_good_words(data):
    for row in data["toy_rm_pairs"]:
        assert row["prompt"] == TOY_PROMPT
        assert row["chosen"].strip(" .") in GOOD_WORDS and row["rejected"].strip(" .") in BAD_WORDS
        assert row["chosen"].startswith(" ") and row["chosen"].endswith(".")


def test_generation_is_a_function_of_the_seed():
    assert generate(0) == generate(0)
    assert generate(0)["sft"] != generate(1)["sft"]
