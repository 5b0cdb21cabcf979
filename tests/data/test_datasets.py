"""Preference, unpaired (KTO), process-reward (PRM) and prompt datasets."""

from __future__ import annotations

import pytest

from repulse.config.sections import DataSection
from repulse.data.preference import PreferenceDataset
from repulse.data.process import ProcessRewardDataset
from repulse.data.prompts import PromptDataset
from repulse.data.unpaired import UnpairedDataset
from repulse.errors import UserError


def trained_text(tok, ids, mask):
    return tok.decode([t for t, m in zip(ids, mask) if m])


# --------------------------------------------------------------------------- preference


def test_preference_with_prompt_key(tokenizer):
    cfg = DataSection(prompt_key="prompt", input_template="User: {}\nAssistant: ", max_len=128)
    rows = [{"prompt": "add two and three.", "chosen": "five", "rejected": "six", "margin": 2}]
    item = PreferenceDataset(rows, tokenizer, cfg)[0]
    assert set(item) == {"chosen_ids", "chosen_mask", "rejected_ids", "rejected_mask", "margin"}
    assert trained_text(tokenizer, item["chosen_ids"], item["chosen_mask"]) == "five</s>"
    assert trained_text(tokenizer, item["rejected_ids"], item["rejected_mask"]) == "six</s>"
    assert tokenizer.decode(item["chosen_ids"]) == "<s>User: add two and three.\nAssistant: five</s>"
    assert item["margin"] == 2.0


def test_preference_chat_conversations_common_prefix(tokenizer):
    cfg = DataSection(apply_chat_template=True, max_len=128)
    user = {"role": "user", "content": "hello"}
    rows = [
        {
            "chosen": [user, {"role": "assistant", "content": "hello there"}],
            "rejected": [user, {"role": "assistant", "content": "bye"}],
        }
    ]
    item = PreferenceDataset(rows, tokenizer, cfg)[0]
    assert trained_text(tokenizer, item["chosen_ids"], item["chosen_mask"]) == "hello there</s>"
    assert trained_text(tokenizer, item["rejected_ids"], item["rejected_mask"]) == "bye</s>"
    assert item["margin"] == 0.0


def test_preference_prompt_key_with_conversation_responses(tokenizer):
    # UltraFeedback-style: prompt text, chosen/rejected repeat the user turn
    cfg = DataSection(prompt_key="prompt", apply_chat_template=True, max_len=128)
    user = {"role": "user", "content": "hello"}
    rows = [{"prompt": "hello", "chosen": [user, {"role": "assistant", "content": "yes"}], "rejected": "no"}]
    item = PreferenceDataset(rows, tokenizer, cfg)[0]
    assert tokenizer.decode(item["chosen_ids"]) == "<s><|user|>\nhello\n<|assistant|>\nyes</s>"
    assert trained_text(tokenizer, item["rejected_ids"], item["rejected_mask"]) == "no</s>"


def test_preference_plain_full_texts_share_token_prefix(tokenizer):
    cfg = DataSection(max_len=128)
    rows = [{"chosen": "User: hi\nAssistant: hello world", "rejected": "User: hi\nAssistant: bye"}]
    item = PreferenceDataset(rows, tokenizer, cfg)[0]
    n_c = item["chosen_mask"].index(1)
    assert n_c == item["rejected_mask"].index(1)
    assert item["chosen_ids"][:n_c] == item["rejected_ids"][:n_c]
    assert item["chosen_ids"][n_c] != item["rejected_ids"][n_c]


def test_preference_identical_warns_with_count(tokenizer, capsys):
    cfg = DataSection(prompt_key="p", max_len=64)
    rows = [{"p": "q", "chosen": "same", "rejected": "same"}] * 3 + [
        {"p": "q", "chosen": "a", "rejected": "b"}
    ]
    ds = PreferenceDataset(rows, tokenizer, cfg)
    assert ds.stats["identical"] == 3 and len(ds) == 4
    err = capsys.readouterr().err
    assert err.count("identical") == 1 and "3 of 4" in err


def test_preference_truncation_and_missing_key(tokenizer):
    cfg = DataSection(prompt_key="p", max_len=8)
    rows = [{"p": "q", "chosen": "one two three four five six seven", "rejected": "no"}]
    ds = PreferenceDataset(rows, tokenizer, cfg)
    assert ds.stats["truncated"] == 1 and len(ds[0]["chosen_ids"]) == 8
    with pytest.raises(UserError) as e:
        PreferenceDataset([{"p": "q", "chosen": "a"}], tokenizer, cfg)
    assert "'rejected'" in str(e.value) and "--data.rejected_key" in str(e.value) and "row 1 " in str(e.value)
    with pytest.raises(UserError, match="margin"):
        PreferenceDataset([{"p": "q", "chosen": "a", "rejected": "b", "margin": "big"}], tokenizer, cfg)


# --------------------------------------------------------------------------- unpaired


def test_unpaired_labels(tokenizer):
    cfg = DataSection(
        input_key="q", output_key="a", label_key="score", input_template="Q: {} A: ", max_len=64
    )
    rows = [{"q": "x", "a": "good", "score": True}, {"q": "y", "a": "bad", "score": 0}]
    ds = UnpairedDataset(rows, tokenizer, cfg)
    assert [it["label"] for it in ds] == [True, False]
    assert trained_text(tokenizer, ds[0]["input_ids"], ds[0]["loss_mask"]) == "good</s>"
    assert ds.stats["desirable"] == 1 and ds.stats["undesirable"] == 1
    with pytest.raises(UserError) as e:
        UnpairedDataset([{"q": "x", "a": "y", "score": "good"}], tokenizer, cfg)
    assert "--data.label_key" in str(e.value) and "row 1:" in str(e.value) and "'good'" in str(e.value)
    with pytest.raises(UserError, match="--data.label_key"):
        UnpairedDataset([{"q": "x", "a": "y", "score": 2}], tokenizer, cfg)


# --------------------------------------------------------------------------- process reward


def test_prm_hard_and_soft_labels(prm_tokenizer):
    tok = prm_tokenizer
    cfg = DataSection(input_key="input", max_len=128)
    text = "Step 1: compute the sum ки\nStep 2: divide by two ки"
    ds = ProcessRewardDataset(
        [{"input": text, "value": ["+", "-"]}, {"input": text, "value": [0.9, 0.2]}],
        tok,
        cfg,
        "ки",
        ["+", "-"],
    )
    ph = ds.placeholder_id
    hard, soft = ds[0], ds[1]
    assert [hard["input_ids"][p] for p in hard["step_positions"]] == [ph, ph]
    assert hard["step_labels"] == [0, 1]
    assert soft["step_labels"] == [0.9, 0.2]
    assert tok.decode(hard["input_ids"]) == "<s>" + text


def test_prm_math_shepherd_label_text(prm_tokenizer):
    cfg = DataSection(input_key="input", label_key="label", max_len=128)
    row = {"input": "a ки\nb ки\nc ки", "label": "a +\nb -\nc +"}
    ds = ProcessRewardDataset([row], prm_tokenizer, cfg, "ки", ["+", "-"])
    assert ds[0]["step_labels"] == [0, 1, 0]


def test_prm_errors(tokenizer, prm_tokenizer):
    cfg = DataSection(input_key="input", max_len=128)
    with pytest.raises(UserError) as e:
        ProcessRewardDataset([{"input": "a ки", "value": ["+"]}], tokenizer, cfg, "ки", ["+", "-"])
    assert "--model.placeholder_token" in str(e.value) and "single token" in str(e.value)
    with pytest.raises(UserError) as e:
        ProcessRewardDataset(
            [{"input": "a ки", "value": ["+"]}, {"input": "a ки b ки", "value": ["+"]}],
            prm_tokenizer,
            cfg,
            "ки",
        )
    assert "row 2:" in str(e.value) and "2 step placeholder" in str(e.value) and "1 label" in str(e.value)
    with pytest.raises(UserError, match="--model.reward_tokens"):
        ProcessRewardDataset([{"input": "a ки", "value": ["?"]}], prm_tokenizer, cfg, "ки", ["+", "-"])


def test_prm_truncation_cuts_steps(prm_tokenizer):
    cfg = DataSection(input_key="input", max_len=7)
    row = {"input": "a ки b ки one two three four five six ки", "value": ["+", "-", "+"]}
    ds = ProcessRewardDataset(
        [row, {"input": "one two three four five six seven ки", "value": ["+"]}], prm_tokenizer, cfg, "ки"
    )
    assert len(ds) == 1 and ds.stats["truncated"] == 1 and ds.stats["dropped_empty"] == 1
    assert ds[0]["step_labels"] == [0, 1] and ds.stats["steps_cut"] == 2


# --------------------------------------------------------------------------- prompts


def test_prompts(tokenizer):
    cfg = DataSection(input_key="q", label_key="answer", apply_chat_template=True)
    ds = PromptDataset([{"q": "add two and three.", "answer": "5"}], tokenizer, cfg)
    item = ds[0]
    assert item["prompt"] == "<s><|user|>\nadd two and three.\n<|assistant|>\n"
    assert tokenizer.decode(item["prompt_ids"]) == item["prompt"] and item["label"] == "5"
    cfg = DataSection(input_key="q", input_template="Q: {}\nA:")
    item = PromptDataset([{"q": "hi"}], tokenizer, cfg)[0]
    assert item["prompt"] == "Q: hi\nA:" and item["label"] is None
    assert item["prompt_ids"][0] == tokenizer.bos_token_id
    ds = PromptDataset(
        [{"q": "hi"}, {"q": "one two three four five six seven"}], tokenizer, cfg, max_prompt_len=10
    )
    assert len(ds) == 1 and ds.stats["too_long"] == 1
    with pytest.raises(UserError, match="--data.label_key"):
        PromptDataset([{"q": "hi"}], tokenizer, DataSection(input_key="q", label_key="answer"))
