"""Reading raw rows (``list[dict]``) from wherever the user points ``--data.dataset``.

Resolution order of one spec (the first that applies wins):

1. ``fmt@path`` (``json@./data``, ``parquet@/x``): files of that format under ``path`` (a
   directory, or one file read as ``fmt`` whatever its extension); splits by file name.
2. an existing directory written by ``datasets.save_to_disk`` (``Dataset`` or ``DatasetDict``);
3. an existing directory of data files (one format only); splits by file name;
4. an existing file: ``.json`` (an array, one object, or JSON lines), ``.jsonl``, ``.csv``,
   ``.parquet``, ``.arrow`` (Arrow IPC file or stream, as ``datasets`` writes it);
5. something that looks like a local path (``./``, ``/``, ``~``, a data extension) but is not
   there: a "not found" error - never a surprise Hub download;
6. otherwise a Hub name, through ``datasets.load_dataset(name, split=...)``.

Splits by file name follow the Hugging Face convention: a file (or a folder on its path)
whose name starts with ``train``/``test``/``validation`` (aliases ``training``, ``eval``,
``valid``, ``val``, ``dev``, ...) followed by a separator belongs to that split; when no file
names a split, every file is ``train``.

Every failure is a :class:`~repulse.errors.UserError` that names the flag and the file (and
the 1-based line for malformed JSON), so a bad path is a one-paragraph message, not a
traceback from deep inside pyarrow.

Rows read from a file are :class:`Row` s: plain dicts that also remember where they came
from (``path, line N`` for JSON lines, ``path, row N`` otherwise; 1-based), so that a later
error about a row's content (a missing key, a wrong type) can name the file and line too.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from repulse.errors import UserError

# extension -> reader format
_EXT_FORMAT = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".arrow": "arrow"}
# names accepted before '@' -> reader format
_AT_FORMATS = {"json": "json", "jsonl": "json", "csv": "csv", "parquet": "parquet", "arrow": "arrow"}
# canonical split name of each alias (HF's split-name keywords)
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "test": "test",
    "testing": "test",
    "eval": "test",
    "evaluation": "test",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _canonical_split(split: str) -> str:
    return _SPLIT_ALIASES.get(split.lower(), split)


def _split_of(path: Path, root: Path) -> str | None:
    """The split a data file belongs to by its name (or a folder's name), or None if unnamed."""
    rel = path.relative_to(root) if path != root else Path(path.name)
    parts = list(rel.parts[:-1]) + [rel.name.split(".")[0]]
    for part in reversed(parts):
        m = re.match(r"[A-Za-z]+", part)
        if not m:
            continue
        word = m.group(0).lower()
        rest = part[m.end() :]
        if word in _SPLIT_ALIASES and (rest == "" or rest[0] in "-_. " or rest[0].isdigit()):
            return _SPLIT_ALIASES[word]
    return None


def _looks_local(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~", ".\\")) or Path(spec).suffix.lower() in _EXT_FORMAT


class Row(dict):
    """A data row: a ``dict`` (and used as one) plus ``origin``, where it was read from.

    ``origin`` is e.g. ``"data/train.jsonl, line 3"`` (1-based, as in the malformed-JSON
    errors) or ``""`` when unknown. ``dict(row)`` or any edit that builds a new dict drops it.
    """

    __slots__ = ("origin",)

    def __init__(self, data: Any = (), origin: str = ""):
        super().__init__(data)
        self.origin = origin


def _with_origin(rows: list[dict], where: str) -> list[dict]:
    """``rows`` as :class:`Row` s whose origin is ``where, row N`` (1-based)."""
    return [Row(r, f"{where}, row {i + 1}") if isinstance(r, dict) else r for i, r in enumerate(rows)]


# --------------------------------------------------------------------------- file readers


def _read_json(path: Path, max_samples: int | None, flag: str) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: tolerate a byte-order mark
    except UnicodeDecodeError as exc:
        raise UserError(f"{flag}: {path} is not UTF-8 text ({exc.reason} at byte {exc.start}).") from None
    stripped = text.lstrip()
    if not stripped:
        return []
    if stripped[0] == "[":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(
                f"{flag}: {path}, line {exc.lineno}: malformed JSON ({exc.msg}, column {exc.colno})."
            ) from None
        rows = data[:max_samples] if max_samples is not None else data
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise UserError(
                    f"{flag}: {path}: row {i + 1} of the top-level array is a {type(row).__name__}, "
                    "not an object; every sample must be a JSON object with named fields."
                )
        return _with_origin(rows, str(path))
    rows: list[dict] = []
    # split on '\n' only: str.splitlines() would also split on U+2028 inside JSON strings
    for lineno, line in enumerate(text.split("\n"), start=1):
        if max_samples is not None and len(rows) >= max_samples:
            break
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            whole = _parse_whole_object(text)
            if whole is not None:
                return _with_origin(whole[:max_samples] if max_samples is not None else whole, str(path))
            raise UserError(
                f"{flag}: {path}, line {lineno}: malformed JSON ({exc.msg}, column {exc.colno}); "
                "a JSON-lines file needs exactly one complete JSON object per line."
            ) from None
        if not isinstance(obj, dict):
            raise UserError(
                f"{flag}: {path}, line {lineno}: a JSON {type(obj).__name__}, not an object; "
                "every sample must be a JSON object with named fields."
            )
        rows.append(Row(obj, f"{path}, line {lineno}"))
    return rows


def _parse_whole_object(text: str) -> list[dict] | None:
    """A pretty-printed single object (or a columnar ``{"col": [...], ...}`` object), else None."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    values = list(obj.values())
    if values and all(isinstance(v, list) for v in values) and len({len(v) for v in values}) == 1:
        keys = list(obj)
        return [dict(zip(keys, vals)) for vals in zip(*values)]
    return [obj]


def _read_csv(path: Path, max_samples: int | None, flag: str) -> list[dict]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    try:
        table = pacsv.read_csv(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{flag}: cannot read the CSV file {path}: {_one_line(exc)}") from None
    if max_samples is not None:
        table = table.slice(0, max_samples)
    return _with_origin(table.to_pylist(), str(path))


def _read_parquet(path: Path, max_samples: int | None, flag: str) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if max_samples is None:
            return _with_origin(pq.read_table(path).to_pylist(), str(path))
        rows: list[dict] = []
        for batch in pq.ParquetFile(path).iter_batches(batch_size=min(max(max_samples, 1), 65536)):
            rows.extend(batch.to_pylist())
            if len(rows) >= max_samples:
                break
        return _with_origin(rows[:max_samples], str(path))
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{flag}: cannot read the Parquet file {path}: {_one_line(exc)}") from None


def _read_arrow(path: Path, max_samples: int | None, flag: str) -> list[dict]:
    import pyarrow as pa

    try:
        with pa.memory_map(str(path)) as src:
            try:
                table = pa.ipc.open_file(src).read_all()
            except pa.ArrowInvalid:
                src.seek(0)
                table = pa.ipc.open_stream(src).read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{flag}: cannot read the Arrow file {path}: {_one_line(exc)}") from None
    if max_samples is not None:
        table = table.slice(0, max_samples)
    return _with_origin(table.to_pylist(), str(path))


_READERS = {"json": _read_json, "csv": _read_csv, "parquet": _read_parquet, "arrow": _read_arrow}


def _read_file(path: Path, fmt: str, max_samples: int | None, flag: str) -> list[dict]:
    return _READERS[fmt](path, max_samples, flag)


# --------------------------------------------------------------------------- directories


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    )


def _data_files(root: Path, fmt: str | None) -> list[Path]:
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and p.suffix.lower() in _EXT_FORMAT
        and (fmt is None or _EXT_FORMAT[p.suffix.lower()] == fmt)
    )
    return files


def _read_dir(
    root: Path, fmt: str | None, split: str, max_samples: int | None, flag: str, spec: str
) -> list[dict]:
    files = _data_files(root, fmt)
    if not files:
        want = ", ".join(k for k, v in _EXT_FORMAT.items() if fmt is None or v == fmt)
        raise UserError(f"{flag} {spec}: the directory {root} holds no data files ({want}).")
    if fmt is None:
        formats = sorted({_EXT_FORMAT[p.suffix.lower()] for p in files})
        if len(formats) > 1:
            raise UserError(
                f"{flag} {spec}: the directory {root} mixes data formats ({', '.join(formats)}); "
                f"keep one format per directory or pick one with '{formats[0]}@{root}'."
            )
        fmt = formats[0]
    by_split: dict[str, list[Path]] = {}
    for p in files:
        by_split.setdefault(_split_of(p, root) or "", []).append(p)
    if set(by_split) == {""}:
        by_split = {"train": by_split[""]}
    else:
        by_split.pop("", None)  # files naming no split are ignored when others name one (as HF does)
    want = _canonical_split(split)
    chosen = by_split.get(want)
    if chosen is None:
        # a custom split name that is a file's own leading word, e.g. split 'sft' for sft.jsonl
        chosen = [p for p in files if re.match(rf"{re.escape(split)}(?![A-Za-z])", p.name)] or None
    if chosen is None:
        raise UserError(
            f"{flag} {spec}: no '{split}' split in {root}; available splits: {', '.join(sorted(by_split))} "
            "(splits come from file names such as train.jsonl / test.jsonl)."
        )
    rows: list[dict] = []
    for p in chosen:
        left = None if max_samples is None else max_samples - len(rows)
        if left is not None and left <= 0:
            break
        rows.extend(_read_file(p, fmt, left, flag))
    return rows


def _from_hf_dataset(ds: Any, split: str, max_samples: int | None, flag: str, spec: str) -> list[dict]:
    import datasets

    if isinstance(ds, (datasets.DatasetDict, dict)):
        if split not in ds:
            raise UserError(f"{flag} {spec}: no '{split}' split; available splits: {', '.join(sorted(ds))}.")
        ds = ds[split]
    if max_samples is not None and len(ds) > max_samples:
        ds = ds.select(range(max_samples))
    return _with_origin(ds.to_list(), spec)


# --------------------------------------------------------------------------- public API


def load_rows(
    spec: str, split: str = "train", max_samples: int | None = None, flag: str = "--data.dataset"
) -> list[dict]:
    """Rows of one data source, at most ``max_samples`` (the first ones, in file order).

    ``flag`` is the user's flag that named ``spec``; it appears in every error message.
    """
    spec = spec.strip()
    if not spec:
        raise UserError(f"{flag} is empty; name a file, a directory, 'json@dir' or a Hub dataset.")
    if max_samples is not None and max_samples < 0:
        raise UserError(f"the sample cap for {flag} must be >= 0, got {max_samples}.")
    rows = _load_rows(spec, split, max_samples, flag)
    if not rows:
        raise UserError(f"{flag} {spec}: the '{split}' split has no rows (empty dataset).")
    return rows


def _load_rows(spec: str, split: str, max_samples: int | None, flag: str) -> list[dict]:
    head, sep, tail = spec.partition("@")
    if sep and head.lower() in _AT_FORMATS:
        fmt = _AT_FORMATS[head.lower()]
        path = Path(tail).expanduser()
        if path.is_dir():
            return _read_dir(path, fmt, split, max_samples, flag, spec)
        if path.is_file():
            return _read_file(path, fmt, max_samples, flag)
        raise UserError(f"{flag} {spec}: no such file or directory: {path}.")
    path = Path(spec).expanduser()
    if path.is_dir():
        if _is_saved_dataset(path):
            import datasets

            try:
                ds = datasets.load_from_disk(str(path))
            except Exception as exc:  # noqa: BLE001 - any failure becomes one readable line
                raise UserError(f"{flag} {spec}: cannot load the saved dataset: {_one_line(exc)}") from None
            return _from_hf_dataset(ds, split, max_samples, flag, spec)
        return _read_dir(path, None, split, max_samples, flag, spec)
    if path.is_file():
        fmt = _EXT_FORMAT.get(path.suffix.lower())
        if fmt is None:
            raise UserError(
                f"{flag} {spec}: unknown data file type '{path.suffix}'; use .json, .jsonl, .csv, "
                f".parquet or .arrow, or name the format as 'json@{spec}'."
            )
        return _read_file(path, fmt, max_samples, flag)
    if _looks_local(spec):
        raise UserError(f"{flag} {spec}: no such file or directory: {path}.")
    return _load_hub(spec, split, max_samples, flag)


def _load_hub(name: str, split: str, max_samples: int | None, flag: str) -> list[dict]:
    try:
        import datasets

        ds = datasets.load_dataset(name, split=split)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - network, auth, missing split...: one line for the user
        raise UserError(
            f"{flag} '{name}' is not a local file or directory, and loading it from the Hugging Face Hub "
            f"failed: {_one_line(exc)}"
        ) from None
    return _from_hf_dataset(ds, split, max_samples, flag, name)


def _probs_flag(flag: str) -> str:
    if flag.endswith("prompt_dataset"):
        return flag[: -len("prompt_dataset")] + "prompt_probs"
    if flag.endswith(".dataset"):
        return flag + "_probs"
    return flag + " probabilities"


def parse_probs(probs: str | list[float] | None, n: int, flag: str) -> list[float] | None:
    """Mixing probabilities as floats; None when not given. Checks count, sign and sum."""
    if probs is None or (isinstance(probs, str) and not probs.strip()):
        return None
    if isinstance(probs, str):
        try:
            values = [float(x) for x in probs.split(",") if x.strip()]
        except ValueError:
            raise UserError(f"{flag} must be a comma list of numbers, e.g. 0.3,0.7; got '{probs}'.") from None
    else:
        values = [float(x) for x in probs]
    if len(values) != n:
        raise UserError(
            f"{flag} has {len(values)} value(s) but {n} dataset(s) were given; give one per dataset."
        )
    if any(v < 0 or not np.isfinite(v) for v in values):
        raise UserError(f"{flag} values must be finite and >= 0; got {probs}.")
    if abs(sum(values) - 1.0) > 1e-4:
        raise UserError(f"{flag} must sum to 1; got {probs} (sum {sum(values):g}).")
    return values


def mix_rows(sources: list[list[dict]], probs: list[float], seed: int) -> list[dict]:
    """Interleave ``sources`` at random with ``probs`` until the first source runs out.

    The rule (that of ``datasets.interleave_datasets(..., stopping_strategy="first_exhausted")``):
    draw a source index i ~ probs with ``numpy.random.default_rng(seed)``; emit the next
    unused row of source i (rows keep their order within a source); stop at the first draw
    of a source that has no rows left. So no row is repeated, the expected share of source i
    is probs[i], and the result is a pure function of (sources, probs, seed). A source with
    probability 0 is never drawn.
    """
    sizes = np.array([len(s) for s in sources])
    p = np.asarray(probs, dtype=np.float64)
    p = p / p.sum()
    live = p > 0
    if not live.any():
        return []
    rng = np.random.default_rng(seed)
    # the first exhaustion happens within sum(sizes)+1 draws; draw them all at once
    n_draws = int(sizes[live].sum()) + 1
    choice = rng.choice(len(sources), size=n_draws, p=p)
    stop = n_draws
    for s in range(len(sources)):
        pos = np.flatnonzero(choice == s)
        if len(pos) > sizes[s]:
            stop = min(stop, int(pos[sizes[s]]))  # the draw that finds source s empty
    choice = choice[:stop]
    index_in_source = np.empty(stop, dtype=np.int64)
    for s in range(len(sources)):
        pos = np.flatnonzero(choice == s)
        index_in_source[pos] = np.arange(len(pos))
    return [sources[int(s)][int(j)] for s, j in zip(choice, index_in_source)]


def load_mixture(
    specs: str,
    probs: str | None = None,
    split: str = "train",
    max_samples: int | None = None,
    seed: int = 42,
    flag: str = "--data.dataset",
    probs_flag: str | None = None,
) -> list[dict]:
    """Rows of a comma list of sources, mixed as OpenRLHF's ``--dataset a,b --dataset_probs p,q``.

    - ``max_samples`` caps each source separately (the first rows of each), as OpenRLHF does.
    - One source: its rows (probabilities, if given, must be ``1``).
    - Several sources with probabilities: :func:`mix_rows` (random interleave, stop at the
      first exhausted source, deterministic in ``seed``).
    - Several sources without probabilities: plain concatenation in the order given, so
      nothing is dropped or repeated.
    """
    pflag = probs_flag or _probs_flag(flag)
    names = [s.strip() for s in specs.split(",") if s.strip()]
    if not names:
        raise UserError(f"{flag} is empty; name a file, a directory, 'json@dir' or a Hub dataset.")
    p = parse_probs(probs, len(names), pflag)
    sources = [load_rows(name, split, max_samples, flag) for name in names]
    if len(sources) == 1:
        return sources[0]
    if p is None:
        return [row for rows in sources for row in rows]
    mixed = mix_rows(sources, p, seed)
    if not mixed:
        raise UserError(f"mixing {flag} {specs} with {pflag} {probs} gave no rows.")
    return mixed
