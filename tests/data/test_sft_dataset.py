"""SFT items: loss masks (instruction, chat, pretrain, multi-turn), errors, truncation counts."""

from __future__ import annotations

import pytest

from repulse.config.sections import DataSection
from repulse.data.sft import SFTDataset
from repulse.errors import UserError

TEMPLATE = "User: {}\nAssistant: "


def masked_runs(item):
    """Contiguous runs of trained token ids."""
    runs, cur = [], []
    for t, m in zip(item["input_ids"], item["loss_mask"]):
        if m:
            cur.append(t)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return runs


def test_instruction_mask_is_exactly_response_and_eos(tokenizer):
    cfg = DataSection(input_key="q", output_key="a", input_template=TEMPLATE, max_len=128)
    ds = SFTDataset(
        [{"q": "what is the capital of France?", "a": "The capital of France is Paris."}], tokenizer, cfg
    )
    item = ds[0]
    ids, mask = item["input_ids"], item["loss_mask"]
    assert len(ids) == len(mask) and mask[0] == 0
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    n_prompt = mask.index(1)
    assert all(mask[n_prompt:]) and not any(mask[:n_prompt])
    assert tokenizer.decode(ids[:n_prompt]) == "<s>User: what is the capital of France?\nAssistant: "
    assert tokenizer.decode(ids[n_prompt:]) == "The capital of France is Paris.</s>"
    # the prompt tokens are those of the prompt alone (what generation sees)
    assert ids[:n_prompt] == tokenizer("User: what is the capital of France?\nAssistant: ")["input_ids"]


def test_chat_single_turn(tokenizer):
    cfg = DataSection(input_key="q", output_key="a", apply_chat_template=True, max_len=128)
    item = SFTDataset([{"q": "hello", "a": "hello world"}], tokenizer, cfg)[0]
    assert tokenizer.decode(item["input_ids"]) == "<s><|user|>\nhello\n<|assistant|>\nhello world</s>"
    assert [tokenizer.decode(r) for r in masked_runs(item)] == ["hello world</s>"]
    assert item["input_ids"].count(tokenizer.bos_token_id) == 1


def test_chat_conversation_without_output_key(tokenizer):
    cfg = DataSection(input_key="messages", apply_chat_template=True, max_len=128)
    msgs = [{"role": "user", "content": "add two and three."}, {"role": "assistant", "content": "five"}]
    item = SFTDataset([{"messages": msgs}], tokenizer, cfg)[0]
    assert [tokenizer.decode(r) for r in masked_runs(item)] == ["five</s>"]
    with pytest.raises(UserError, match="does not end with an assistant message"):
        SFTDataset([{"messages": msgs[:1]}], tokenizer, cfg)


def test_pretrain_mode(tokenizer):
    cfg = DataSection(input_key="text", max_len=128, input_template=TEMPLATE)
    item = SFTDataset([{"text": "The quick brown fox"}], tokenizer, cfg, pretrain_mode=True)[0]
    assert tokenizer.decode(item["input_ids"]) == "<s>The quick brown fox"
    assert item["loss_mask"] == [0] + [1] * (len(item["input_ids"]) - 1)


def test_multiturn_masks_cover_exactly_assistant_turns(tokenizer):
    cfg = DataSection(input_key="messages", multiturn=True, apply_chat_template=True, max_len=256)
    msgs = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": "general kenobi"},
        {"role": "user", "content": "one two"},
        {"role": "assistant", "content": "three four"},
        {"role": "user", "content": "five"},
        {"role": "assistant", "content": "six seven"},
    ]
    ds = SFTDataset([{"messages": msgs}], tokenizer, cfg)
    item = ds[0]
    assert [tokenizer.decode(r) for r in masked_runs(item)] == [
        "general kenobi</s>",
        "three four</s>",
        "six seven</s>",
    ]
    full = tokenizer(tokenizer.apply_chat_template(msgs, tokenize=False).rstrip(), add_special_tokens=False)[
        "input_ids"
    ]
    assert item["input_ids"] == full
    assert ds.stats["unstable_turns"] == 0


def test_multiturn_needs_chat_template(tokenizer):
    cfg = DataSection(input_key="messages", multiturn=True, max_len=64)
    with pytest.raises(UserError, match="--data.apply_chat_template"):
        SFTDataset([{"messages": []}], tokenizer, cfg)


def test_multiturn_unstable_template_is_counted(make_tok):
    tok = make_tok()
    # earlier assistant turns are rendered shortened once a later turn follows
    tok.chat_template = (
        "{{ bos_token }}{% for m in messages %}"
        "{% if m['role'] == 'assistant' %}<|assistant|>\n"
        "{% if loop.last %}{{ m['content'] }}{% else %}{{ m['content'][:3] }}{% endif %}{{ eos_token }}\n"
        "{% else %}<|user|>\n{{ m['content'] }}\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    cfg = DataSection(input_key="m", multiturn=True, apply_chat_template=True, max_len=256)
    msgs = [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "general kenobi"},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "two"},
    ]
    ds = SFTDataset([{"m": msgs}], tok, cfg)
    assert ds.stats["unstable_turns"] == 1
    runs = [tok.decode(r) for r in masked_runs(ds[0])]
    assert runs[-1] == "two</s>"
    assert all("<|user|>" not in r for r in runs)


def test_missing_keys_name_key_row_and_flag(tokenizer):
    cfg = DataSection(input_key="question", output_key="response", max_len=64)
    rows = [{"question": "a", "response": "b"}, {"question": "c"}]
    with pytest.raises(UserError) as e:
        SFTDataset(rows, tokenizer, cfg)
    msg = str(e.value)
    assert "'response'" in msg and "row 2 " in msg and "--data.output_key" in msg  # 1-based
    with pytest.raises(UserError) as e:
        SFTDataset([{"prompt": "a", "response": "b"}], tokenizer, cfg)
    assert "'question'" in str(e.value) and "row 1 " in str(e.value) and "--data.input_key" in str(e.value)


def test_row_errors_are_one_based_and_name_the_file_and_line(tokenizer, tmp_path):
    """A missing key in a row read from a file: ``row N`` counts from 1 (as the malformed-JSON
    line numbers do) and the message names the file and its line, also after blank lines, a
    CSV header, and mixing two files; rows built in memory say ``row N`` alone. One paragraph."""
    import pickle

    from repulse.data.sources import load_mixture, load_rows

    cfg = DataSection(input_key="question", output_key="response", max_len=64)
    jl = tmp_path / "train.jsonl"
    jl.write_text('{"question": "a", "response": "b"}\n\n{"question": "c"}\n')  # the bad row is on line 3

    def error(rows) -> str:
        with pytest.raises(UserError) as e:
            SFTDataset(rows, tokenizer, cfg)
        msg = str(e.value)
        assert "\n" not in msg and "--data.output_key" in msg and "'response'" in msg, msg
        return msg

    rows = load_rows(str(jl))
    assert rows == [{"question": "a", "response": "b"}, {"question": "c"}]  # still plain dicts to users
    assert f"row 2 ({jl}, line 3) has no key 'response'" in error(rows)
    assert pickle.loads(pickle.dumps(rows))[1].origin == f"{jl}, line 3"  # survives worker hand-offs
    csv = tmp_path / "train.csv"
    csv.write_text("question,answer\na,b\n")  # the header names no 'response'
    assert f"row 1 ({csv}, row 1) has no key 'response'" in error(load_rows(str(csv)))
    good = tmp_path / "good.jsonl"
    good.write_text('{"question": "x", "response": "y"}\n' * 2)
    assert f"row 4 ({jl}, line 3)" in error(load_mixture(f"{good},{jl}"))  # positions 1-2 are good.jsonl
    assert error([{"question": "a", "response": "b"}, {"question": "c"}]).startswith("row 2 has no key")
    with pytest.raises(UserError) as e:
        SFTDataset([{"question": "a", "response": "b"}, ["c", "d"]], tokenizer, cfg)
    assert str(e.value).startswith("row 2 is a list")


def test_no_output_key_without_chat(tokenizer):
    with pytest.raises(UserError, match="--data.output_key"):
        SFTDataset([{"input": "a"}], tokenizer, DataSection(max_len=64))


def test_truncation_counted_and_reported(tokenizer, capsys):
    cfg = DataSection(input_key="q", output_key="a", input_template=TEMPLATE, max_len=16)
    short = {"q": "hi", "a": "yes"}
    long_answer = {"q": "hi", "a": "one two three four five six seven eight nine ten " * 3}
    long_prompt = {"q": "one two three four five six seven eight nine ten " * 3, "a": "ok"}
    ds = SFTDataset([short, long_answer, long_answer, long_prompt], tokenizer, cfg)
    assert ds.stats == {"rows": 4, "truncated": 2, "dropped_empty": 1}
    assert len(ds) == 3
    assert all(len(it["input_ids"]) <= 16 for it in ds)
    cut = ds[1]
    assert (
        len(cut["input_ids"]) == 16
        and cut["input_ids"][-1] != tokenizer.eos_token_id
        and cut["loss_mask"][-1] == 1
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert (
        "3 of 4 samples exceeded --data.max_len 16" in err
        and "2 were truncated" in err
        and "1 were dropped" in err
    )


def test_chat_template_that_changes_the_prompt_splits_at_token_agreement(make_tok):
    tok = make_tok()
    # the generation prompt differs from how the assistant header is rendered in history
    tok.chat_template = (
        "{{ bos_token }}{% for m in messages %}"
        "{% if m['role'] == 'assistant' %}<|assistant|> {{ m['content'] }}{{ eos_token }}"
        "{% else %}<|user|>\n{{ m['content'] }}\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    cfg = DataSection(input_key="q", output_key="a", apply_chat_template=True, max_len=64)
    item = SFTDataset([{"q": "hello", "a": "world"}], tok, cfg)[0]
    assert tok.decode(item["input_ids"]) == "<s><|user|>\nhello\n<|assistant|> world</s>"
    assert "<|user|>" not in tok.decode([t for t, m in zip(item["input_ids"], item["loss_mask"]) if m])
    assert tok.decode([t for t, m in zip(item["input_ids"], item["loss_mask"]) if m]).endswith("world</s>")
