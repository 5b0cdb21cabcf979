"""The parts of the seed-flag translation that the rules share: argv grouped into flags, a
read-only view of them (``_Ctx``), what the rules produce (``_Out``), and value helpers."""

from __future__ import annotations

from dataclasses import dataclass, field

from repulse.errors import UserError

# --------------------------------------------------------------------------- parsing argv


@dataclass
class _Flag:
    """One ``--name [values...]`` group of argv, or a stray token (name None)."""

    name: str | None
    values: list[str]
    raw: list[str]
    eq: bool = False  # written as --name=value


def _is_flag(tok: str) -> bool:
    """Same rule as the parser: ``--x``; negative numbers (``-10``) and ``-`` are values."""
    return tok.startswith("--") and len(tok) > 2


def _group(argv: list[str]) -> list[_Flag]:
    out: list[_Flag] = []
    for tok in argv:
        if _is_flag(tok):
            name, eq, value = tok[2:].partition("=")
            if "." not in name:
                name = name.replace("-", "_")
            out.append(_Flag(name, [value] if eq else [], [tok], bool(eq)))
        elif out and out[-1].name is not None:
            out[-1].values.append(tok)
            out[-1].raw.append(tok)
        else:
            out.append(_Flag(None, [tok], [tok]))
    return out


@dataclass
class _Ctx:
    """Read-only view of the legacy argv for the value-dependent rules."""

    flags: list[_Flag]
    fork: bool = False

    def has(self, *names: str) -> bool:
        return any(f.name in names for f in self.flags)

    def get(self, *names: str) -> list[str] | None:
        """Values of the last occurrence of any of ``names`` (``[]`` for a bare switch), else None."""
        found = None
        for f in self.flags:
            if f.name in names:
                found = f.values
        return found

    def one(self, *names: str) -> str | None:
        vals = self.get(*names)
        if vals is None or not vals:
            return None
        if len(vals) != 1:
            raise UserError(f"--{names[0]} takes one value, got {' '.join(vals)!r}.")
        return vals[0]

    def integer(self, name: str, default: int) -> int:
        val = self.one(name)
        if val is None:
            return default
        try:
            return int(float(val))
        except ValueError:
            raise UserError(f"--{name} expects an integer, got {val!r}.") from None


@dataclass
class _Out:
    """What the rules produce: flags in our names, consumed legacy names, notes, ignored flags."""

    command: str = ""
    emitted: list[tuple[str, list[str]]] = field(default_factory=list)
    consumed: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)

    def emit(self, dest: str, *values: str) -> None:
        self.emitted.append((dest, list(values)))

    def ignore(self, name: str, reason: str) -> None:
        self.consumed.add(name)
        self.ignored.setdefault(name, reason)


# --------------------------------------------------------------------------- value rules


def flip_sign(value: str) -> str:
    """Negate a number written as text, keeping its spelling (``-10`` -> ``10``, ``0.1`` -> ``-0.1``).

    The fork writes the target's inverse temperature and the transform's exponent as
    negative numbers (β_c < 0); repulse uses the paper's positive β, so both flip.
    """
    try:
        number = float(value)
    except ValueError:
        raise UserError(f"expected a number, got {value!r}.") from None
    if number == 0:
        return value.lstrip("+-")
    if value.startswith("-"):
        return value[1:]
    return "-" + value.lstrip("+")
