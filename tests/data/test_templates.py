"""Input templates and chat templates."""

from __future__ import annotations

import pytest

from repulse.data.templates import check_input_template, render_prompt, set_chat_template, special_prefix
from repulse.errors import UserError


def test_template_without_braces():
    with pytest.raises(UserError) as e:
        check_input_template("User: \nAssistant: ")
    assert "--data.input_template" in str(e.value) and "{}" in str(e.value)


def test_empty_template_means_none():
    assert check_input_template("") is None
    assert check_input_template(None) is None


def test_bad_format_string():
    with pytest.raises(UserError, match="--data.input_template"):
        check_input_template("{} {name}")


def test_literal_backslash_n_warns_once(capsys):
    t = "User: {}\\nAssistant: "
    assert check_input_template(t) == t
    check_input_template(t)
    err = capsys.readouterr().err
    assert err.count("backslash-n") == 1 and "--data.input_template" in err


def test_render_plain_and_chat(tokenizer):
    assert render_prompt(tokenizer, "hi", "User: {}\nAssistant: ") == "User: hi\nAssistant: "
    assert render_prompt(tokenizer, "hi") == "hi"
    s = render_prompt(tokenizer, "hi", apply_chat_template=True)
    assert s == "<s><|user|>\nhi\n<|assistant|>\n"
    msgs = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}]
    assert (
        render_prompt(tokenizer, msgs, apply_chat_template=True)
        == "<s><|system|>\nbe nice\n<|user|>\nhi\n<|assistant|>\n"
    )
    with pytest.raises(UserError, match="--data.apply_chat_template"):
        render_prompt(tokenizer, msgs)


def test_missing_chat_template(make_tok):
    tok = make_tok()
    tok.chat_template = None
    with pytest.raises(UserError, match="--data.tokenizer_chat_template"):
        render_prompt(tok, "hi", apply_chat_template=True)


def test_set_chat_template_string_and_file(tmp_path, make_tok):
    tok = make_tok()
    tpl = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}"
    set_chat_template(tok, tpl)
    assert render_prompt(tok, "hi", apply_chat_template=True) == "[user] hi\n[assistant] "
    f = tmp_path / "t.jinja"
    f.write_text("{% for m in messages %}{{ m['content'] }}|{% endfor %}")
    set_chat_template(tok, str(f))
    assert render_prompt(tok, "hi", apply_chat_template=True) == "hi|"
    with pytest.raises(UserError, match="--data.tokenizer_chat_template"):
        set_chat_template(tok, str(tmp_path / "missing.jinja"))
    with pytest.raises(UserError, match="--data.tokenizer_chat_template"):
        set_chat_template(tok, "{% for m in messages %}")


def test_special_prefix(tokenizer, make_tok):
    assert special_prefix(tokenizer) == [tokenizer.bos_token_id]
    assert special_prefix(make_tok(add_bos=False)) == []
