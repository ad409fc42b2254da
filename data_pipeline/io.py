"""Reading every supported input into Dolma documents, with bad input quarantined, and atomic writers.

Readers yield `Record`s: either a document (a dict in Dolma's schema) or a quarantine entry with its
reason. Nothing is dropped silently: every line, row or file that does not become a document comes
back as a quarantine record, and the ingest task counts and writes them.

Line reading uses `readline(limit)` on the binary stream, so a 200 MB line is never held in memory:
it is skipped in chunks and quarantined as `document_too_large`.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import datasets  # Hugging Face datasets, local only (save_to_disk folders or local data files)
import pyarrow.parquet as pq  # the reference Parquet implementation
import zstandard  # zstd: the format Dolma ships; the reference binding (Python-zstandard)

from .config import InputConfig, get_path

NOW = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
_CTRL = set(range(0, 32)) - {9, 10, 13}


@dataclass
class Record:
    doc: dict | None = None
    reason: str = ""  # quarantine reason when doc is None
    where: str = ""  # file:line or file:row
    excerpt: str = ""
    nbytes: int = 0
    records: int = 1  # input records this entry stands for (a lost Parquet row group: its rows)


def _excerpt(raw: bytes | str, n: int = 160) -> str:
    if isinstance(raw, bytes):
        raw = raw[:n].decode("utf-8", errors="backslashreplace")
    return raw[:n]


def control_fraction(text: str) -> float:
    """Share of characters that are C0 controls (other than tab/newline/CR) or U+FFFD replacements."""
    if not text:
        return 0.0
    sample = text if len(text) <= 200_000 else text[:100_000] + text[-100_000:]
    bad = sum(1 for ch in sample if (ord(ch) in _CTRL) or ch == "\ufffd")
    return bad / len(sample)


def open_binary(path: str) -> io.BufferedIOBase:
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith(".zst") or path.endswith(".zstd"):
        raw = open(path, "rb")
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))
    return open(path, "rb")


def detect_format(path: str, cfg: InputConfig) -> str:
    if cfg.format != "auto":
        return cfg.format
    p = Path(path)
    if p.is_dir():
        if (
            (p / "state.json").exists()
            or (p / "dataset_dict.json").exists()
            or (p / "dataset_info.json").exists()
        ):
            return "hf_disk"
        raise ValueError(f"{path} is a folder but not a Hugging Face save_to_disk dataset")
    name = p.name.lower()
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".txt", ".txt.gz", ".txt.zst", ".md")):
        return "text"
    return "dolma"


class Normalizer:
    """Turns a raw row (dict) into a Dolma document or a quarantine reason."""

    def __init__(self, cfg: InputConfig, path: str):
        self.cfg = cfg
        self.stem = Path(path).name.split(".")[0]
        self.default_source = cfg.source or self.stem

    def __call__(self, row: Any, where: str, index: int, nbytes: int) -> Record:
        cfg = self.cfg
        if not isinstance(row, dict):
            return Record(
                reason="not_a_json_object", where=where, excerpt=_excerpt(repr(row)), nbytes=nbytes
            )
        if cfg.text_field not in row or row[cfg.text_field] is None:
            return Record(
                reason="missing_text",
                where=where,
                excerpt=_excerpt(json.dumps(row)[:160]),
                nbytes=nbytes,
            )
        text = row[cfg.text_field]
        if not isinstance(text, str):
            return Record(
                reason="non_string_text", where=where, excerpt=_excerpt(repr(text)), nbytes=nbytes
            )
        if not text.strip():
            return Record(reason="empty_text", where=where, nbytes=nbytes)
        tbytes = len(text.encode("utf-8", errors="surrogatepass"))
        if tbytes > cfg.max_doc_bytes:
            return Record(
                reason="document_too_large", where=where, excerpt=f"{tbytes} bytes", nbytes=nbytes
            )
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates from \ud800 escapes in JSON
            return Record(
                reason="invalid_utf8",
                where=where,
                excerpt=_excerpt(text.encode("utf-8", "backslashreplace")),
                nbytes=nbytes,
            )
        if control_fraction(text) > cfg.max_control_char_fraction:
            return Record(
                reason="binary_garbage",
                where=where,
                excerpt=_excerpt(text.encode("utf-8", "backslashreplace")),
                nbytes=nbytes,
            )
        meta = row.get("metadata")
        meta = dict(meta) if isinstance(meta, dict) else ({} if meta is None else {"value": meta})
        for k, v in row.items():  # keep extra columns (url, ...) in metadata
            if k not in (cfg.text_field, cfg.id_field, "source", "added", "created", "metadata"):
                meta.setdefault(
                    k, v if isinstance(v, (str, int, float, bool)) or v is None else str(v)
                )
        rid = row.get(cfg.id_field)
        doc = {
            "id": str(rid) if rid not in (None, "") else f"{self.stem}-{index}",
            "text": text,
            "source": str(row.get("source") or self.default_source),
            "added": str(row.get("added") or NOW),
            "created": str(row.get("created") or row.get("added") or NOW),
            "metadata": meta,
        }
        return Record(doc=doc, where=where, nbytes=nbytes)


_READ_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile, zstandard.ZstdError, OSError)
_CHUNK = 16 * 2**20


def _is_compressed(path: str) -> bool:
    return path.endswith((".gz", ".zst", ".zstd"))


def _decompressed(path: str, raw: io.BufferedIOBase) -> io.BufferedIOBase:
    """The text bytes of an open file: gzip and zstd decompressed, plain files as they are."""
    if path.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if path.endswith((".zst", ".zstd")):
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=False))
    return raw


def jsonl_pieces(path: str, n: int) -> list[dict | None]:
    """Split a JSONL file into about `n` pieces of equal size on disk, cut at line starts:
    [{"start": uncompressed offset, "line": lines before it, "end": offset or None}, ...]. One pass
    over the decompressed bytes in 16 MB chunks, counting newlines; a plain file's pieces are later
    reached by seeking, a compressed file's by decompressing and discarding the bytes before `start`
    (gzip and zstd streams cannot seek). A read error (a truncated file) ends the pass: the last
    piece runs to the cut, where its reader quarantines it as it would without splitting."""
    if n <= 1:
        return [None]
    size = os.path.getsize(path)
    targets = [size * k // n for k in range(1, n)]  # in bytes on disk (compressed or not)
    cuts: list[tuple[int, int]] = []  # (uncompressed offset of a line start, lines before it)
    pos = lines = 0
    with open(path, "rb") as raw:
        fh = _decompressed(path, raw)
        try:
            c0 = 0
            # read1: what decompresses now, so a truncated stream yields its text up to the cut
            while targets and (chunk := fh.read1(_CHUNK)):
                c1 = raw.tell()  # bytes on disk consumed so far (a little ahead: read buffers)
                j = 0
                while targets and targets[0] < c1:
                    # where the target falls in this chunk, interpolated from disk to text bytes
                    at = int((targets[0] - c0) / max(1, c1 - c0) * len(chunk))
                    k = chunk.find(b"\n", max(j, at))
                    if k < 0:
                        break  # no line start left in this chunk: cut in the next one
                    cuts.append((pos + k + 1, lines + chunk.count(b"\n", 0, k + 1)))
                    targets.pop(0)
                    j = k + 1
                lines += chunk.count(b"\n")
                pos += len(chunk)
                c0 = c1
        except _READ_ERRORS:
            pass
        finally:
            if fh is not raw:
                fh.close()
    cuts = [c for c in dict.fromkeys(cuts) if c[0] < pos]
    if not cuts:
        return [None]
    starts = [(0, 0), *cuts]
    ends = [c[0] for c in cuts] + [None]
    return [{"start": st, "line": ln, "end": e} for (st, ln), e in zip(starts, ends)]


def _skip_to(fh, path: str, start: int) -> int:
    """Position a stream at byte `start` of the uncompressed data: a seek in a plain file, in a
    compressed one decompressing up to it. Returns the position reached."""
    if start and not _is_compressed(path):
        fh.seek(start)
        return start
    pos = 0
    while pos < start:
        chunk = fh.read(min(_CHUNK, start - pos))
        if not chunk:
            break
        pos += len(chunk)
    return pos


def _rest_of_long_line(fh) -> int:
    """Read and drop the rest of an oversized line in chunks (never held whole); its bytes."""
    skipped = 0
    try:
        while True:
            chunk = fh.readline(8 * 2**20)
            skipped += len(chunk)
            if not chunk or chunk.endswith(b"\n"):
                break
    except _READ_ERRORS:
        pass  # the cut is reported by the next read
    return skipped


def _parse_line(line: bytes, cfg: InputConfig, where: str):
    """The JSON value of one line, or the quarantine Record that says why it has none."""
    try:
        s = line.decode("utf-8")
    except UnicodeDecodeError:
        binary = (
            b"\x00" in line
            or control_fraction(line.decode("latin-1")) > cfg.max_control_char_fraction
        )
        reason = "binary_garbage" if binary else "invalid_utf8"
        return Record(reason=reason, where=where, excerpt=_excerpt(line), nbytes=len(line))
    try:
        return json.loads(s)
    except json.JSONDecodeError as err:
        binary = control_fraction(s) > cfg.max_control_char_fraction
        return Record(
            reason="binary_garbage" if binary else "malformed_json",
            where=where,
            excerpt=f"{err.msg}: {_excerpt(s)}",
            nbytes=len(line),
        )


def _cut(path: str, lineno: int, err: Exception) -> Record:
    return Record(
        reason="truncated_or_corrupt_file",
        where=f"{path}:{lineno + 1}",
        excerpt=f"{type(err).__name__}: {err}",
    )


def read_jsonl(
    path: str,
    cfg: InputConfig,
    tell: Callable[[int], None] | None = None,
    piece: dict | None = None,
) -> Iterator[Record]:
    """Dolma JSONL (plain, gzip or zstd), the whole file or one piece of `jsonl_pieces`; `tell`
    gets the uncompressed bytes read so far."""
    norm = Normalizer(cfg, path)
    limit = cfg.max_doc_bytes + 2 * 2**20  # JSON escaping overhead on top of the text limit
    start = piece["start"] if piece else 0
    end = piece["end"] if piece else None
    lineno = piece["line"] if piece else 0
    raw_file = open(path, "rb")
    fh = _decompressed(path, raw_file)
    try:
        try:
            pos = _skip_to(fh, path, start)
        except _READ_ERRORS as err:
            yield _cut(path, lineno, err)
            return
        while end is None or pos < end:
            try:
                line = fh.readline(limit)
            except _READ_ERRORS as err:
                yield _cut(path, lineno, err)
                return
            if not line:
                return
            pos += len(line)
            lineno += 1
            where = f"{path}:{lineno}"
            if tell:
                tell(pos - start)
            if len(line) >= limit and not line.endswith(b"\n"):
                rest = _rest_of_long_line(fh)
                pos += rest
                total = len(line) + rest
                yield Record(
                    reason="document_too_large",
                    where=where,
                    excerpt=f"line of {total} bytes",
                    nbytes=total,
                )
            elif not line.strip():
                yield Record(reason="empty_line", where=where, nbytes=len(line))
            else:
                row = _parse_line(line, cfg, where)
                yield row if isinstance(row, Record) else norm(row, where, lineno, len(line))
    finally:
        fh.close()
        raw_file.close()


def read_text(
    path: str, cfg: InputConfig, tell: Callable[[int], None] | None = None
) -> Iterator[Record]:
    """A plain-text file is one document (its id is the file name)."""
    norm = Normalizer(cfg, path)
    size = os.path.getsize(path)
    if not path.endswith((".gz", ".zst")) and size > cfg.max_doc_bytes:
        yield Record(reason="document_too_large", where=path, excerpt=f"{size} bytes", nbytes=size)
        return
    try:
        with open_binary(path) as fh:
            data = fh.read(cfg.max_doc_bytes + 1)
    except (EOFError, zlib.error, gzip.BadGzipFile, zstandard.ZstdError, OSError) as err:
        yield Record(
            reason="truncated_or_corrupt_file", where=path, excerpt=f"{type(err).__name__}: {err}"
        )
        return
    if tell:
        tell(size)
    if len(data) > cfg.max_doc_bytes:
        yield Record(
            reason="document_too_large",
            where=path,
            excerpt=f"over {cfg.max_doc_bytes} bytes",
            nbytes=len(data),
        )
        return
    if b"\x00" in data:
        yield Record(reason="binary_garbage", where=path, excerpt=_excerpt(data), nbytes=len(data))
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        yield Record(reason="invalid_utf8", where=path, excerpt=_excerpt(data), nbytes=len(data))
        return
    yield norm({cfg.text_field: text, cfg.id_field: Path(path).name}, path, 0, len(data))


def read_parquet(
    path: str,
    cfg: InputConfig,
    tell: Callable[[int], None] | None = None,
    piece: dict | None = None,
) -> Iterator[Record]:
    """Parquet, the whole file or the row groups [a, b) of a piece. A row group that cannot be read
    is one quarantine entry standing for all its rows (their count is in the file's metadata)."""
    norm = Normalizer(cfg, path)
    try:
        pf = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises ArrowInvalid, OSError, ... for a broken footer
        yield Record(reason="unreadable_input", where=path, excerpt=f"{type(err).__name__}: {err}")
        return
    a, b = piece["row_groups"] if piece else (0, pf.num_row_groups)
    row = sum(pf.metadata.row_group(g).num_rows for g in range(a))
    size = os.path.getsize(path)
    for rg in range(a, b):
        n_rows = pf.metadata.row_group(rg).num_rows
        try:
            rows = pf.read_row_group(rg).to_pylist()
        except Exception as err:  # a corrupt page: pyarrow's errors have no common base
            yield Record(
                reason="truncated_or_corrupt_file",
                where=f"{path}:rowgroup{rg}",
                excerpt=f"{type(err).__name__}: {err}"[:300],
                records=n_rows,
            )
            row += n_rows
            continue
        for r in rows:
            yield norm(r, f"{path}:{row}", row, 0)
            row += 1
        if tell:
            tell(int(size * (rg + 1 - a) / pf.num_row_groups))


def parquet_pieces(path: str, n: int) -> list[dict | None]:
    """About `n` pieces of whole row groups (read from the footer; no pass over the data)."""
    groups = pq.ParquetFile(path).num_row_groups
    n = min(n, groups)
    if n <= 1:
        return [None]
    return [{"row_groups": [groups * k // n, groups * (k + 1) // n]} for k in range(n)]


def _hf_parts(path: str, cfg: InputConfig, fmt: str) -> list:
    if fmt == "hf_disk":
        ds = datasets.load_from_disk(path)
        if isinstance(ds, datasets.DatasetDict):
            return [ds[k] for k in sorted(ds.keys())]
        return [ds]
    return [datasets.load_dataset(cfg.hf_builder, data_files=path, split="train")]


def read_hf(
    path: str,
    cfg: InputConfig,
    fmt: str,
    tell: Callable[[int], None] | None = None,
    piece: dict | None = None,
) -> Iterator[Record]:
    """A Hugging Face dataset (save_to_disk folder or local data files), whole or the rows [a, b)
    over its splits in name order. A failure while iterating is one quarantine entry standing for
    the rows of that split not yet read."""
    norm = Normalizer(cfg, path)
    try:
        parts = _hf_parts(path, cfg, fmt)
    except Exception as err:  # datasets raises many kinds (FileNotFoundError, ArrowInvalid, ...)
        yield Record(
            reason="unreadable_input", where=path, excerpt=f"{type(err).__name__}: {err}"[:300]
        )
        return
    a, b = piece["rows"] if piece else (0, sum(len(p) for p in parts))
    i = 0
    for part in parts:
        lo, hi = max(a, i) - i, min(b, i + len(part)) - i
        if lo >= hi:
            i += len(part)
            continue
        done = 0
        try:
            for r in part.select(range(lo, hi)):
                yield norm(r, f"{path}:{i + lo + done}", i + lo + done, 0)
                done += 1
        except Exception as err:  # arrow/datasets errors have no common base
            yield Record(
                reason="truncated_or_corrupt_file",
                where=f"{path}:{i + lo + done}",
                excerpt=f"{type(err).__name__}: {err}"[:300],
                records=hi - lo - done,
            )
        i += len(part)


def hf_pieces(path: str, cfg: InputConfig, fmt: str, n: int) -> list[dict | None]:
    rows = sum(len(p) for p in _hf_parts(path, cfg, fmt))
    n = min(n, rows)
    if n <= 1:
        return [None]
    return [{"rows": [rows * k // n, rows * (k + 1) // n]} for k in range(n)]


def input_size(path: str) -> int:
    p = Path(path)
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return p.stat().st_size


def split_input(path: str, cfg: InputConfig, n: int) -> list[dict | None]:
    """The pieces of one input file for `n` ingest tasks (fewer when the format allows fewer; a
    text file is one document, never split). Every piece's records are the file's records in order,
    so the concatenated pieces' output equals the whole file's."""
    if n <= 1:
        return [None]
    fmt = detect_format(path, cfg)
    if fmt == "dolma":
        return jsonl_pieces(path, n)
    if fmt == "parquet":
        return parquet_pieces(path, n)
    if fmt in ("hf_disk", "hf_files"):
        return hf_pieces(path, cfg, fmt, n)
    return [None]


def read_input(
    path: str,
    cfg: InputConfig,
    tell: Callable[[int], None] | None = None,
    piece: dict | None = None,
) -> Iterator[Record]:
    fmt = detect_format(path, cfg)
    if fmt == "dolma":
        return read_jsonl(path, cfg, tell, piece)
    if fmt == "text":
        return read_text(path, cfg, tell)
    if fmt == "parquet":
        return read_parquet(path, cfg, tell, piece)
    return read_hf(path, cfg, fmt, tell, piece)


def read_docs(path: str | Path) -> Iterator[dict]:
    """Our own well-formed outputs (documents/, attributes/, mixed/)."""
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            yield json.loads(line)


class AtomicJsonlWriter:
    """gzip JSONL written to PATH.tmp and renamed on close: a killed task leaves no half file under PATH."""

    def __init__(self, path: str | Path, level: int = 3):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.fh = gzip.open(self.tmp, "wt", encoding="utf-8", compresslevel=level)
        self.count = 0
        self.nbytes = 0

    def write(self, obj: dict) -> None:
        s = json.dumps(obj, ensure_ascii=False)  # raises before anything reaches the file
        self.fh.write(s)
        self.fh.write("\n")
        self.count += 1
        self.nbytes += len(s) + 1

    def close(self) -> None:
        self.fh.close()
        os.replace(self.tmp, self.path)

    def __enter__(self) -> AtomicJsonlWriter:
        return self

    def __exit__(self, exc_type, *_: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.fh.close()


def doc_url(doc: dict, fields: list[str]) -> str:
    for f in fields:
        v = get_path(doc, f)
        if isinstance(v, str) and v:
            return v
    return ""
