"""Reading training data from files: pre-training corpora (streamed) and stage-2 pair/triplet files.

Pre-training corpora (:func:`stream_corpus`) are read lazily, row by row, never whole into memory:

- ``.txt`` / ``.text``: one sentence (or passage) per line; documents are separated by blank lines,
  which are kept as empty rows (the packer treats them as document boundaries);
- ``.jsonl`` / ``.json`` (one object per line): one document per line, its text in ``text_field``;
- ``.parquet``: one document per row, its text in ``text_field``;
- a ``datasets`` folder written by ``Dataset.save_to_disk``: one document per row (memory-mapped).

Every row carries a ``document_id`` (an int, the same for all lines of one ``.txt`` file; one per
row otherwise), so that a packer can tell where a document ends. Several files, folders or glob
patterns may be given; they are read in the order given (each pattern's matches sorted).

Stage-2 data (:func:`read_contrastive_file`): ``.tsv`` (a header row naming the columns), ``.jsonl``
or a ``datasets`` folder with (anchor, positive[, negative...]) text columns.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from collections.abc import Iterator, Sequence

from datasets import Dataset, DatasetDict, Features, IterableDataset, Value, load_from_disk

TEXT_SUFFIXES = (".txt", ".text")
JSON_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
CORPUS_FEATURES = Features({"text": Value("string"), "document_id": Value("int64")})


def is_datasets_folder(path: str) -> bool:
    """Whether ``path`` is a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``."""
    return os.path.isdir(path) and any(
        os.path.isfile(os.path.join(path, name)) for name in ("dataset_info.json", "dataset_dict.json")
    )


def expand_corpus_paths(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """The files / ``datasets`` folders named by ``paths`` (paths or glob patterns), in the given order.

    Raises:
        FileNotFoundError: a path does not exist or a pattern matches nothing (naming it).
        ValueError: a file has an unsupported suffix, or a folder is not a ``datasets`` folder.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    expanded: list[str] = []
    for path in map(os.fspath, paths):
        if glob.has_magic(path):
            matches = sorted(glob.glob(path))
            if not matches:
                raise FileNotFoundError(f"corpus: the pattern {path!r} matches no file")
        elif not os.path.exists(path):
            raise FileNotFoundError(f"corpus file not found: {path}")
        else:
            matches = [path]
        for match in matches:
            corpus_format(match)  # check early, before any training
            expanded.append(match)
    if not expanded:
        raise ValueError("corpus: no file given")
    return expanded


def corpus_format(path: str) -> str:
    """``"text"``, ``"json"``, ``"parquet"`` or ``"datasets"`` for one corpus path."""
    if os.path.isdir(path):
        if is_datasets_folder(path):
            return "datasets"
        raise ValueError(
            f"corpus: {path} is a folder but not a datasets folder (Dataset.save_to_disk); "
            "pass its files or a glob such as 'folder/*.txt'"
        )
    suffix = os.path.splitext(path)[1].lower()
    for suffixes, name in ((TEXT_SUFFIXES, "text"), (JSON_SUFFIXES, "json"), (PARQUET_SUFFIXES, "parquet")):
        if suffix in suffixes:
            return name
    raise ValueError(
        f"corpus: {path} has an unsupported suffix {suffix!r} "
        "(supported: .txt, .jsonl, .parquet, or a datasets folder)"
    )


def _text_of(value: object, field: str, where: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"{where}: field {field!r} must hold text, got {type(value).__name__}: {value!r:.80}")


def _text_rows(path: str, document_id: int) -> Iterator[dict]:
    # errors="replace": undecodable bytes become U+FFFD, which the cleaning drops (and counts) row by row.
    with open(path, encoding="utf-8", errors="replace", newline=None) as handle:
        for line in handle:
            yield {"text": line.rstrip("\n"), "document_id": document_id}


def _json_rows(path: str, text_field: str, first_id: int) -> Iterator[dict]:
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path} line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where} is not valid JSON: {error.msg}") from None
            if not isinstance(record, dict) or text_field not in record:
                keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise ValueError(
                    f"{where} has no field {text_field!r} (its fields: {keys}); choose one with "
                    "--text-field / text_field"
                )
            yield {"text": _text_of(record[text_field], text_field, where), "document_id": first_id + number}


def _parquet_rows(path: str, text_field: str, first_id: int) -> Iterator[dict]:
    import pyarrow.parquet as parquet

    source = parquet.ParquetFile(path)
    if text_field not in source.schema_arrow.names:
        raise ValueError(
            f"{path} has no column {text_field!r} (its columns: {source.schema_arrow.names}); choose one "
            "with --text-field / text_field"
        )
    row = 0
    for batch in source.iter_batches(columns=[text_field], batch_size=1000):
        for value in batch.column(0).to_pylist():
            yield {"text": _text_of(value, text_field, f"{path} row {row}"), "document_id": first_id + row}
            row += 1


def _datasets_rows(path: str, text_field: str, first_id: int) -> Iterator[dict]:
    dataset = load_from_disk(path)
    if isinstance(dataset, DatasetDict):
        if "train" not in dataset:
            raise ValueError(f"{path} holds the splits {list(dataset)} but no 'train' split")
        dataset = dataset["train"]
    if text_field not in dataset.column_names:
        raise ValueError(
            f"{path} has no column {text_field!r} (its columns: {dataset.column_names}); choose one "
            "with --text-field / text_field"
        )
    for row, value in enumerate(dataset.select_columns([text_field]).to_iterable_dataset()):
        text = _text_of(value[text_field], text_field, f"{path} row {row}")
        yield {"text": text, "document_id": first_id + row}


#: Document ids of file ``i`` start at ``i * FILE_ID_STRIDE``, so that they never repeat across files.
FILE_ID_STRIDE = 2**40


def corpus_rows(
    paths: list[str],
    text_field: str = "text",
    keep_blank_lines: bool = True,
    file_indices: list[int] | None = None,
) -> Iterator[dict]:
    """The raw ``{"text", "document_id"}`` rows of the corpus ``paths``, in order, uncleaned.

    Document ids never repeat across files (file ``i``'s start at ``i * FILE_ID_STRIDE``; ``file_indices``
    numbers the files when ``datasets`` hands a shard of them); a ``.txt`` file has one id, documents
    there being separated by blank lines.
    """
    for index, path in zip(file_indices or range(len(paths)), paths, strict=True):
        first_id = index * FILE_ID_STRIDE
        kind = corpus_format(path)
        if kind == "text":
            rows = _text_rows(path, first_id)
        elif kind == "json":
            rows = _json_rows(path, text_field, first_id)
        elif kind == "parquet":
            rows = _parquet_rows(path, text_field, first_id)
        else:
            rows = _datasets_rows(path, text_field, first_id)
        for row in rows:
            if keep_blank_lines or row["text"] is None or row["text"].strip():
                yield row


def stream_corpus(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    text_field: str = "text",
    keep_blank_lines: bool = True,
) -> IterableDataset:
    """A streamed ``IterableDataset`` of the raw ``text`` + ``document_id`` rows of the corpus ``paths``.

    Args:
        paths: Files, ``datasets`` folders or glob patterns (see the module docstring for the formats).
        text_field: The field of ``.jsonl`` objects / column of ``.parquet`` files and ``datasets``
            folders that holds the text.
        keep_blank_lines: Keep the blank lines of ``.txt`` files (document boundaries) as empty rows;
            ``False`` skips them (for training one line per example).

    Rows are not cleaned here: the packer (:func:`retromae_st.packing.pack_corpus`) or
    :func:`retromae_st.data.clean_text_stream` does that, counting what it drops.
    """
    files = expand_corpus_paths(paths)
    return IterableDataset.from_generator(
        corpus_rows,
        # Lists in gen_kwargs are split into shards (one per DataLoader worker); the indices keep ids apart.
        gen_kwargs={
            "paths": files,
            "file_indices": list(range(len(files))),
            "text_field": text_field,
            "keep_blank_lines": keep_blank_lines,
        },
        features=CORPUS_FEATURES,
    )


# Stage 2 ----------------------------------------------------------------------------------------


def _read_tsv(path: str) -> Dataset:
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if not header:
            raise ValueError(f"{path} is empty: expected a header row naming the columns")
        columns: dict[str, list[str]] = {name: [] for name in header}
        if len(columns) != len(header):
            raise ValueError(f"{path}: the header row {header} repeats a column name")
        for number, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise ValueError(f"{path} line {number} has {len(row)} fields, the header has {len(header)}")
            for name, value in zip(header, row, strict=True):
                columns[name].append(value)
    return Dataset.from_dict(columns)


def _read_jsonl(path: str) -> Dataset:
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} line {number} is not valid JSON: {error.msg}") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path} line {number} is not a JSON object")
            if records and set(record) != set(records[0]):
                raise ValueError(
                    f"{path} line {number} has the fields {sorted(record)}, the first line {sorted(records[0])}"
                )
            records.append(record)
    if not records:
        raise ValueError(f"{path} holds no rows")
    return Dataset.from_dict({name: [record[name] for record in records] for name in records[0]})


def read_contrastive_file(path: str | os.PathLike, columns: Sequence[str] | None = None) -> Dataset:
    """(anchor, positive[, negative...]) rows from a ``.tsv`` (with a header), ``.jsonl`` or ``datasets``
    folder, reduced to ``columns`` (default: all, in file order). Not cleaned: see
    :func:`retromae_st.data.prepare_contrastive_dataset`."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"stage-2 data not found: {path}")
    if os.path.isdir(path):
        if not is_datasets_folder(path):
            raise ValueError(f"{path} is a folder but not a datasets folder (Dataset.save_to_disk)")
        dataset = load_from_disk(path)
        if isinstance(dataset, DatasetDict):
            if "train" not in dataset:
                raise ValueError(f"{path} holds the splits {list(dataset)} but no 'train' split")
            dataset = dataset["train"]
    else:
        suffix = os.path.splitext(path)[1].lower()
        if suffix == ".tsv":
            dataset = _read_tsv(path)
        elif suffix in JSON_SUFFIXES:
            dataset = _read_jsonl(path)
        else:
            raise ValueError(
                f"{path}: unsupported suffix {suffix!r} (supported: .tsv, .jsonl, a datasets folder)"
            )
    if columns is not None:
        missing = [column for column in columns if column not in dataset.column_names]
        if missing:
            raise ValueError(f"{path} has no column(s) {missing}; its columns are {dataset.column_names}")
        dataset = dataset.select_columns(list(columns))
    return dataset
