"""Reading texts: ``.txt`` (one per line), ``.jsonl`` (one JSON object or string
per line) and ``.json`` (a list of strings or objects).

Nothing is dropped silently and nothing crashes the run: a record that cannot be
used is skipped, counted under its reason, and reported with its line (or item)
numbers in ``TextRecords.notes``. The reasons:

- ``empty``: a blank or whitespace-only line, or an empty text;
- ``undecodable``: not valid UTF-8 (or holding NUL bytes: binary data);
- ``not_json``: a ``.jsonl`` line that is not JSON;
- ``no_field``: an object without the ``--text-field`` (default ``text``);
- ``not_text``: a value that is not a string (a number, null, a list, ...).

Only a file with no usable text at all is an error (``InputError``, exit 2),
and so is a ``.json`` file that is not a JSON list.

Lines are split on ``\\n`` only (a trailing ``\\r`` is removed), not on the
other Unicode line breaks, so a text holding U+2028 stays one text. A UTF-8
byte order mark is ignored; a UTF-16 or UTF-32 file is refused with a hint.
``--text-field`` may be a dotted path (``extended_tweet.full_text``) when no
key has that exact name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from lstm_doctor.errors import InputError
from lstm_doctor.load import check_readable_file

TEXT_SUFFIXES = (".txt", ".jsonl", ".json")
REASONS = {
    "empty": "empty",
    "undecodable": "not valid UTF-8 text",
    "not_json": "not JSON",
    "no_field": "without the text field",
    "not_text": "not a string",
}
SHOWN = 8  # record numbers listed per reason in a note

_BOMS = {
    b"\xff\xfe\x00\x00": "UTF-32",
    b"\x00\x00\xfe\xff": "UTF-32",
    b"\xff\xfe": "UTF-16",
    b"\xfe\xff": "UTF-16",
}


def is_text_inputs(path) -> bool:
    """Whether ``--inputs`` names a text file (by its suffix)."""
    return Path(str(path)).suffix.lower() in TEXT_SUFFIXES


@dataclass
class TextRecords:
    """The usable texts of a file, and an account of every record skipped.

    ``origins[k]`` is the 1-based line (``.txt``, ``.jsonl``) or item
    (``.json``) number of ``texts[k]``; ``skipped`` maps a reason to the
    numbers of the records skipped for it.
    """

    path: str
    unit: str  # "line" or "item"
    total: int
    texts: list[str] = field(default_factory=list)
    origins: list[int] = field(default_factory=list)
    skipped: dict[str, list[int]] = field(default_factory=dict)
    text_field: str | None = None

    def keep(self, number: int, text: str) -> None:
        if not text.strip():
            self.skip("empty", number)
        else:
            self.texts.append(text)
            self.origins.append(number)

    def skip(self, reason: str, number: int) -> None:
        self.skipped.setdefault(reason, []).append(number)

    @property
    def counts(self) -> dict[str, int]:
        """{"records", "kept", and one count per reason (0 when none)}."""
        out = {"records": self.total, "kept": len(self.texts)}
        out.update({reason: len(self.skipped.get(reason, ())) for reason in REASONS})
        return out

    @property
    def notes(self) -> list[str]:
        """One line per reason: how many records were skipped and which."""
        notes = []
        for reason, label in REASONS.items():
            numbers = self.skipped.get(reason)
            if not numbers:
                continue
            what = f"{self.unit}s" if len(numbers) > 1 else self.unit
            listed = ", ".join(str(n) for n in numbers[:SHOWN]) + (", …" if len(numbers) > SHOWN else "")
            extra = f" '{self.text_field}'" if reason == "no_field" and self.text_field else ""
            notes.append(
                f"{len(numbers)} of {self.total} {self.unit}s skipped as {label}{extra} ({what} {listed})"
            )
        return notes

    def summary(self) -> str:
        c = self.counts
        skipped = c["records"] - c["kept"]
        return f"{c['kept']} of {c['records']} {self.unit}s read as texts" + (
            f", {skipped} skipped" if skipped else ""
        )


def _decode(raw: bytes) -> str | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if "\x00" in text else text


def _check_encoding(raw: bytes, path: Path) -> bytes:
    for bom, name in _BOMS.items():
        if raw.startswith(bom):
            raise InputError(f"the file is {name} (byte order mark); save it as UTF-8", path)
    return raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw


def _field(obj: dict, name: str):
    """``obj[name]``, or the dotted path ``a.b.c`` when no key is ``name``."""
    if name in obj:
        return obj[name], True
    value = obj
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None, False
        value = value[part]
    return value, True


def _take(records: TextRecords, number: int, value, seen_keys: set) -> None:
    """Keep a JSON string, or an object's text field; else count why not."""
    if isinstance(value, dict):
        seen_keys.update(list(value)[:20])
        value, found = _field(value, records.text_field or "text")
        if not found:
            records.skip("no_field", number)
            return
    if not isinstance(value, str):
        records.skip("not_text", number)
    elif any("\udc80" <= ch <= "\udcff" for ch in value) or "\x00" in value:
        records.skip("undecodable", number)
    else:
        records.keep(number, value)


def _lines(raw: bytes) -> list[bytes]:
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the final newline ends the last line; it does not start one
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def read_texts(path: str | Path, text_field: str = "text") -> TextRecords:
    """Read a ``.txt``, ``.jsonl`` or ``.json`` file of texts (see the module docstring)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TEXT_SUFFIXES:
        raise InputError(f"not a text file: expected {', '.join(TEXT_SUFFIXES)}", path)
    check_readable_file(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}", path) from None
    if not raw.strip():
        raise InputError("the file is empty: no texts to featurize", path)
    raw = _check_encoding(raw, path)
    seen_keys: set = set()
    if suffix == ".json":
        records = _read_json(raw, path, text_field, seen_keys)
    else:
        lines = _lines(raw)
        records = TextRecords(str(path), "line", len(lines), text_field=text_field if suffix == ".jsonl" else None)
        for number, line in enumerate(lines, start=1):
            text = _decode(line)
            if text is None:
                records.skip("undecodable", number)
            elif suffix == ".txt":
                records.keep(number, text)
            elif not text.strip():
                records.skip("empty", number)
            else:
                try:
                    value = json.loads(text)
                except (json.JSONDecodeError, RecursionError):  # nested too deeply: not a text record
                    records.skip("not_json", number)
                    continue
                _take(records, number, value, seen_keys)
    if records.total == 0:
        raise InputError(f"the file holds no texts (an empty {'list' if suffix == '.json' else 'file'})", path)
    if not records.texts:
        counts = records.counts
        why = ", ".join(f"{counts[r]} {label}" for r, label in REASONS.items() if counts[r])
        hint = ""
        if counts["no_field"] and seen_keys:
            fields = ", ".join(sorted(str(k) for k in seen_keys)[:12])
            hint = f"; the objects have the fields {fields}: pass --text-field"
        raise InputError(
            f"no usable text: {records.total} {records.unit}s, all skipped ({why}){hint}", path
        )
    return records


def _read_json(raw: bytes, path: Path, text_field: str, seen_keys: set) -> TextRecords:
    # surrogateescape keeps undecodable bytes inside strings as lone surrogates,
    # so one bad string is counted and skipped instead of failing the file.
    text = raw.decode("utf-8", "surrogateescape")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})", path) from None
    except RecursionError:
        raise InputError("JSON nested too deeply to be a list of texts", path) from None
    if isinstance(data, dict):
        lists = [k for k, v in data.items() if isinstance(v, list)]
        hint = f" (it is an object; its lists: {', '.join(lists[:6])})" if lists else " (it is an object)"
        raise InputError(
            f"expected a JSON list of strings or objects{hint}; use .jsonl for one object per line", path
        )
    if not isinstance(data, list):
        raise InputError(f"expected a JSON list of strings or objects, found a {type(data).__name__}", path)
    records = TextRecords(str(path), "item", len(data), text_field=text_field)
    for number, value in enumerate(data, start=1):
        _take(records, number, value, seen_keys)
    return records
