"""Every source format, splits, max_samples, mixing, and the errors users see."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from repulse.data.sources import load_mixture, load_rows, mix_rows
from repulse.errors import UserError

ROWS = [{"input": f"q{i}", "output": f"a{i}", "n": i} for i in range(5)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_jsonl(tmp_path):
    assert load_rows(str(write_jsonl(tmp_path / "d.jsonl", ROWS))) == ROWS


def test_json_array_object_and_lines(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(ROWS, indent=2))
    assert load_rows(str(tmp_path / "a.json")) == ROWS
    (tmp_path / "l.json").write_text("\n".join(json.dumps(r) for r in ROWS) + "\n\n")
    assert load_rows(str(tmp_path / "l.json")) == ROWS
    (tmp_path / "o.json").write_text(json.dumps(ROWS[0], indent=2))
    assert load_rows(str(tmp_path / "o.json")) == [ROWS[0]]
    (tmp_path / "c.json").write_text(json.dumps({"input": ["x", "y"], "output": ["1", "2"]}, indent=1))
    assert load_rows(str(tmp_path / "c.json")) == [
        {"input": "x", "output": "1"},
        {"input": "y", "output": "2"},
    ]


def test_csv_infers_types(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("input,label,score\nhello,true,1\nbye,false,0\n")
    assert load_rows(str(p)) == [
        {"input": "hello", "label": True, "score": 1},
        {"input": "bye", "label": False, "score": 0},
    ]


def test_parquet_and_arrow(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(ROWS)
    pq.write_table(table, tmp_path / "d.parquet")
    assert load_rows(str(tmp_path / "d.parquet")) == ROWS
    assert load_rows(str(tmp_path / "d.parquet"), max_samples=2) == ROWS[:2]
    with pa.OSFile(str(tmp_path / "f.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    assert load_rows(str(tmp_path / "f.arrow")) == ROWS
    with pa.OSFile(str(tmp_path / "s.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    assert load_rows(str(tmp_path / "s.arrow")) == ROWS


def test_nested_messages_roundtrip_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    assert load_rows(str(tmp_path / "m.parquet")) == rows


def test_max_samples(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", ROWS)
    assert load_rows(str(p), max_samples=3) == ROWS[:3]
    assert load_mixture(str(p), max_samples=2) == ROWS[:2]


def test_json_at_dir_splits(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", ROWS[:3])
    write_jsonl(tmp_path / "test.jsonl", ROWS[3:])
    assert load_rows(f"json@{tmp_path}") == ROWS[:3]
    assert load_rows(f"json@{tmp_path}", split="test") == ROWS[3:]
    with pytest.raises(UserError) as e:
        load_rows(f"json@{tmp_path}", split="validation", flag="--eval.dataset")
    msg = str(e.value)
    assert "--eval.dataset" in msg and "validation" in msg and "test, train" in msg


def test_plain_dir_sharded_and_aliases(tmp_path):
    write_jsonl(tmp_path / "train-00000-of-00002.jsonl", ROWS[:2])
    write_jsonl(tmp_path / "train-00001-of-00002.jsonl", ROWS[2:4])
    write_jsonl(tmp_path / "dev.jsonl", ROWS[4:])
    assert load_rows(str(tmp_path)) == ROWS[:4]
    assert load_rows(str(tmp_path), split="validation") == ROWS[4:]
    assert load_rows(str(tmp_path), split="dev") == ROWS[4:]


def test_dir_without_split_names_is_train(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", ROWS[:2])
    write_jsonl(tmp_path / "b.jsonl", ROWS[2:])
    assert load_rows(str(tmp_path)) == ROWS
    with pytest.raises(UserError, match="available splits: train"):
        load_rows(str(tmp_path), split="test")


def test_dir_mixed_formats_is_an_error(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", ROWS)
    (tmp_path / "b.csv").write_text("x\n1\n")
    with pytest.raises(UserError, match="mixes data formats"):
        load_rows(str(tmp_path))
    assert load_rows(f"csv@{tmp_path}") == [{"x": 1}]


def test_save_to_disk(tmp_path):
    import datasets

    dd = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS[:3]), "test": datasets.Dataset.from_list(ROWS[3:])}
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    assert load_rows(str(tmp_path / "dd")) == ROWS[:3]
    assert load_rows(str(tmp_path / "dd"), split="test", max_samples=1) == ROWS[3:4]
    with pytest.raises(UserError) as e:
        load_rows(str(tmp_path / "dd"), split="dev")
    assert "'dev'" in str(e.value) and "test, train" in str(e.value) and "--data.dataset" in str(e.value)
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    assert load_rows(str(tmp_path / "ds")) == ROWS


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(UserError) as e:
        load_rows(str(missing))
    assert "--data.dataset" in str(e.value) and str(missing) in str(e.value)
    with pytest.raises(UserError, match="no such file"):
        load_rows("./surely/not/here")
    with pytest.raises(UserError, match="no such file"):
        load_rows(f"json@{tmp_path}/absent")


def test_malformed_json_line_number(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"a": 1}\n{"a": 2}\n\n{"a": 3,,}\n{"a": 4}\n')
    with pytest.raises(UserError) as e:
        load_rows(str(p), flag="--data.prompt_dataset")
    msg = str(e.value)
    assert "line 4" in msg and str(p) in msg and "--data.prompt_dataset" in msg
    arr = tmp_path / "bad.json"
    arr.write_text('[\n{"a": 1},\n{"a": 2\n]\n')
    with pytest.raises(UserError, match="line 4"):
        load_rows(str(arr))


def test_non_object_line(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text('{"a": 1}\n"just a string"\n')
    with pytest.raises(UserError, match="line 2"):
        load_rows(str(p))


def test_empty_dataset(tmp_path):
    p = tmp_path / "empty.jsonl"
    p.write_text("\n\n")
    with pytest.raises(UserError) as e:
        load_rows(str(p))
    assert "no rows" in str(e.value) and str(p) in str(e.value)
    (tmp_path / "h.csv").write_text("a,b\n")
    with pytest.raises(UserError, match="no rows"):
        load_rows(str(tmp_path / "h.csv"))


def test_unknown_extension(tmp_path):
    p = tmp_path / "d.txt"
    p.write_text('{"a": 1}\n')
    with pytest.raises(UserError, match="json@"):
        load_rows(str(p))
    assert load_rows(f"json@{p}") == [{"a": 1}]


def test_hub_failure_is_one_paragraph(monkeypatch):
    import datasets

    def boom(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'org/name' on the Hub\nRetrying in 1s [Retry 1/5].")

    monkeypatch.setattr(datasets, "load_dataset", boom)
    with pytest.raises(UserError) as e:
        load_rows("org/name")
    msg = str(e.value)
    assert msg.startswith(
        "--data.dataset 'org/name' is not a local file or directory, and loading it from the"
    )
    assert "Couldn't reach" in msg and "Retry" not in msg and "\n" not in msg


def test_hub_success_path(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda name, split: datasets.Dataset.from_list(ROWS))
    assert load_rows("org/name", max_samples=2) == ROWS[:2]


# --------------------------------------------------------------------------- mixing


def _two_sources(tmp_path, n=1000):
    a = write_jsonl(tmp_path / "a.jsonl", [{"src": "a", "i": i} for i in range(n)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"src": "b", "i": i} for i in range(n)])
    return f"{a},{b}"


def test_mixture_proportions_and_determinism(tmp_path):
    specs = _two_sources(tmp_path)
    rows = load_mixture(specs, "0.3,0.7", seed=1)
    assert rows == load_mixture(specs, "0.3,0.7", seed=1)
    assert rows != load_mixture(specs, "0.3,0.7", seed=2)
    counts = Counter(r["src"] for r in rows)
    assert counts["b"] == 1000  # first_exhausted: stops when b (the likelier one) runs out
    assert abs(counts["a"] / len(rows) - 0.3) < 0.04
    for src in "ab":  # order within each source is kept, nothing repeated
        idx = [r["i"] for r in rows if r["src"] == src]
        assert idx == list(range(len(idx)))


def test_mix_rows_rule():
    a = [{"s": "a", "i": i} for i in range(10)]
    b = [{"s": "b", "i": i} for i in range(10)]
    assert mix_rows([a, b], [1.0, 0.0], seed=0) == a
    assert mix_rows([a, b], [0.0, 1.0], seed=0) == b


def test_mixture_without_probs_concatenates(tmp_path):
    rows = load_mixture(_two_sources(tmp_path, 3))
    assert [r["src"] for r in rows] == ["a"] * 3 + ["b"] * 3


def test_mixture_probs_errors(tmp_path):
    specs = _two_sources(tmp_path, 3)
    with pytest.raises(UserError) as e:
        load_mixture(specs, "1.0")
    assert "--data.dataset_probs" in str(e.value) and "2 dataset" in str(e.value)
    with pytest.raises(UserError, match="--data.dataset_probs must sum to 1"):
        load_mixture(specs, "0.5,0.6")
    with pytest.raises(UserError, match="--data.dataset_probs"):
        load_mixture(specs, "0.5,abc")
    with pytest.raises(UserError, match="--data.prompt_probs"):
        load_mixture(specs, "0.2", flag="--data.prompt_dataset")
