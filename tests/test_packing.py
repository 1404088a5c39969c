"""pack_corpus: blocks that fit, every token kept in order, document boundaries, streamed = in memory."""

from __future__ import annotations

import pytest
from datasets import Dataset, IterableDataset
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from retromae_st import PackingStats, pack_corpus
from retromae_st.data import clean_text
from tests.conftest import minilm_path

WORDPIECE_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def _wrap(tokenizer: Tokenizer, cls: str, sep: str, unk: str, pad: str, mask: str) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token=unk,
        cls_token=cls,
        sep_token=sep,
        pad_token=pad,
        mask_token=mask,
    )


def wordpiece_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """BERT-style: BertNormalizer, BertPreTokenizer, WordPiece, [CLS] $A [SEP]."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.train_from_iterator(
        texts, trainers.WordPieceTrainer(vocab_size=2000, special_tokens=WORDPIECE_SPECIALS)
    )
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return _wrap(tokenizer, "[CLS]", "[SEP]", "[UNK]", "[PAD]", "[MASK]")


def byte_level_bpe_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """RoBERTa-style: byte-level BPE without a prefix space, <s> $A </s>."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2000, special_tokens=ROBERTA_SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.post_processor = processors.RobertaProcessing(
        ("</s>", tokenizer.token_to_id("</s>")), ("<s>", tokenizer.token_to_id("<s>")), trim_offsets=True
    )
    return _wrap(tokenizer, "<s>", "</s>", "<unk>", "<pad>", "<mask>")


def unigram_metaspace_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """XLM-R-style: NFKC, Metaspace (▁, always prepended), Unigram, <s> $A </s>."""
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=2000, special_tokens=ROBERTA_SPECIALS, unk_token="<unk>")
    tokenizer.train_from_iterator(texts, trainer)
    bos, eos = tokenizer.token_to_id("<s>"), tokenizer.token_to_id("</s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", bos), ("</s>", eos)]
    )
    return _wrap(tokenizer, "<s>", "</s>", "<unk>", "<pad>", "<mask>")


FAMILIES = ["minilm", "wordpiece", "byte_level_bpe", "unigram_metaspace"]
#: Byte-level BPE without a prefix space tokenises a word after a space differently ("Ġworld"): there a
#: line's tokens are those it has after a space, which pack_corpus keeps by writing that space.
LEADING_SPACE = {"minilm": False, "wordpiece": False, "byte_level_bpe": True, "unigram_metaspace": False}


@pytest.fixture(scope="module")
def tokenizers_by_family(tokenizer, sample_texts):
    texts = sample_texts[:400]
    return {
        "minilm": tokenizer,
        "wordpiece": wordpiece_tokenizer(texts),
        "byte_level_bpe": byte_level_bpe_tokenizer(texts),
        "unigram_metaspace": unigram_metaspace_tokenizer(texts),
    }


def documents_of(sample_texts: list[str]) -> list[list[str]]:
    """Documents of real lines of many lengths, with a line far longer than a block, a one-word document,
    unicode that byte-level BPE spreads over several tokens per character, and punctuation runs (but no
    word longer than a block: cutting one changes its tokens, see the test for that)."""
    documents = [sample_texts[i : i + n] for i, n in ((0, 5), (5, 1), (6, 9), (15, 3))]
    documents.append([" ".join(sample_texts[20:26])])  # one very long line
    documents.append(["a"])
    documents.append(["Tōkyō 東京 is big 🙂🙂.", "Größe, naïve café — done!!"])
    documents.append(sample_texts[30:34])
    return documents


def as_rows(documents: list[list[str]], blank_rows: int = 1) -> list[str]:
    rows = [""] * blank_rows
    for document in documents:
        rows += document + [""] * blank_rows
    return rows


def cleaned(line: str) -> str:
    """A line as pack_corpus packs it: invisible characters deleted (a left-to-right mark in the sample
    corpus), each run of whitespace one space."""
    return " ".join(clean_text(line, 0, "text", None)[0].split())


def line_tokens(tokenizer, line: str, leading_space: bool) -> list[int]:
    line = cleaned(line)
    return tokenizer(" " + line if leading_space else line, add_special_tokens=False)["input_ids"]


def block_tokens(tokenizer, blocks) -> list[list[int]]:
    """Each block as the collator tokenises it, special tokens included."""
    return tokenizer(list(blocks["text"]), add_special_tokens=True)["input_ids"]


def assert_blocks_follow_documents(tokenizer, blocks, documents, max_seq_length, leading_space) -> None:
    """Every block fits, and the blocks, in order, are the documents' tokens in order, cut only where
    one document's tokens end or inside a document (a block never holds tokens of two documents)."""
    encoded = block_tokens(tokenizer, blocks)
    assert max(len(ids) for ids in encoded) <= max_seq_length
    special = len(tokenizer("", add_special_tokens=True)["input_ids"])
    inner = [ids[special // 2 : len(ids) - (special - special // 2)] for ids in encoded]
    position = 0
    for number, document in enumerate(documents):
        expected = [token for line in document for token in line_tokens(tokenizer, line, leading_space)]
        got: list[int] = []
        while len(got) < len(expected):
            assert position < len(inner), f"document {number}: the blocks end before its tokens do"
            got += inner[position]
            position += 1
        assert got == expected, f"document {number}: tokens lost, changed or reordered"
    assert position == len(inner), "blocks left over after the last document"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("max_seq_length", [24, 64])
def test_blocks_fit_and_keep_every_token_of_each_document(
    tokenizers_by_family, sample_texts, family, max_seq_length
):
    tokenizer = tokenizers_by_family[family]
    documents = documents_of(sample_texts)
    corpus = Dataset.from_dict({"text": as_rows(documents, blank_rows=2)})
    blocks, stats = pack_corpus(corpus, tokenizer, max_seq_length)
    assert blocks.column_names == ["text"]
    assert_blocks_follow_documents(tokenizer, blocks, documents, max_seq_length, LEADING_SPACE[family])
    assert stats.documents == len(documents)
    assert stats.lines == sum(len(document) for document in documents)
    assert stats.blocks == len(blocks)
    assert (stats.resplit_blocks, stats.retokenised_differently, stats.words_cut) == (0, 0, 0)
    assert stats.long_lines > 0  # the long line was cut over blocks


@pytest.mark.parametrize("family", FAMILIES)
def test_lines_that_fit_are_never_split(tokenizers_by_family, sample_texts, family):
    tokenizer = tokenizers_by_family[family]
    lines = [cleaned(line) for line in sample_texts[:60]]
    longest = max(len(line_tokens(tokenizer, line, LEADING_SPACE[family])) for line in lines)
    blocks, _ = pack_corpus(Dataset.from_dict({"text": lines}), tokenizer, max_seq_length=longest + 2)
    texts = [text.strip() for text in blocks["text"]]
    assert len(texts) < len(lines)  # blocks hold several lines ...
    first = 0
    for text in texts:  # ... each block being whole consecutive lines
        last = next(k for k in range(first + 1, len(lines) + 1) if " ".join(lines[first:k]) == text)
        first = last
    assert first == len(lines)


def test_blocks_fill_up_to_the_longest_run_of_whole_lines(tokenizer):
    # 3-token lines into blocks of 2 + 7 text tokens: two lines a block (6 tokens), never a third.
    lines = ["the cat sat", "a dog ran", "we all ate", "it is red", "my pen fell"]
    blocks, stats = pack_corpus(Dataset.from_dict({"text": lines}), tokenizer, max_seq_length=9)
    assert list(blocks["text"]) == ["the cat sat a dog ran", "we all ate it is red", "my pen fell"]
    assert (stats.blocks, stats.tokens, stats.long_lines) == (3, 15, 0)


def test_document_id_changes_and_empty_rows_end_documents(tokenizer):
    corpus = Dataset.from_dict(
        {
            "text": ["the cat sat", "a dog ran", "we all ate", "", "it is red", "my pen fell"],
            "document_id": [1, 1, 2, 2, 2, 2],
        }
    )
    blocks, stats = pack_corpus(corpus, tokenizer, max_seq_length=64)
    assert list(blocks["text"]) == ["the cat sat a dog ran", "we all ate", "it is red my pen fell"]
    assert stats.documents == 3
    # Without the column only the empty row separates documents.
    blocks, stats = pack_corpus(corpus, tokenizer, max_seq_length=64, document_column=None)
    assert list(blocks["text"]) == ["the cat sat a dog ran we all ate", "it is red my pen fell"]
    assert stats.documents == 2


def test_empty_documents_give_no_blocks(tokenizer):
    corpus = Dataset.from_dict({"text": ["", "  ", "\t", "the cat sat", "", "", " \n ", "a dog ran", ""]})
    blocks, stats = pack_corpus(corpus, tokenizer, max_seq_length=64)
    assert list(blocks["text"]) == ["the cat sat", "a dog ran"]
    assert (stats.documents, stats.lines, stats.dropped.total) == (2, 2, 0)


def test_a_corpus_without_text_is_an_error(tokenizer):
    with pytest.raises(ValueError, match="no non-empty text"):
        pack_corpus(Dataset.from_dict({"text": ["", "   ", None]}), tokenizer, max_seq_length=64)


def test_a_document_of_one_token(tokenizer):
    blocks, stats = pack_corpus(Dataset.from_dict({"text": ["", "hello", ""]}), tokenizer, max_seq_length=3)
    assert list(blocks["text"]) == ["hello"]
    assert tokenizer("hello")["input_ids"] == block_tokens(tokenizer, blocks)[0]
    assert (stats.blocks, stats.tokens, stats.documents) == (1, 1, 1)
    assert stats.fill_rate == 1.0


def test_stats_on_a_hand_made_case(tokenizer):
    # "hello world" + "good morning" = 4 tokens: one block of 4 + [CLS] [SEP] = 6; the next document's
    # 3 tokens a second block of 5; the None row is dropped and counted.
    corpus = Dataset.from_dict({"text": ["hello world", "good morning", None, "", "the cat sat"]})
    blocks, stats = pack_corpus(corpus, tokenizer, max_seq_length=6)
    assert list(blocks["text"]) == ["hello world good morning", "the cat sat"]
    assert isinstance(stats, PackingStats)
    assert (stats.lines, stats.documents, stats.blocks, stats.tokens) == (3, 2, 2, 7)
    assert stats.fill_rate == pytest.approx((7 + 2 * 2) / (2 * 6))
    assert dict(stats.dropped.reasons) == {"missing (None)": 1}
    assert stats.cpu_seconds > 0
    text = str(stats)
    assert "3 lines of 2 documents -> 2 blocks of <= 6 tokens" in text
    assert "91.7%" in text and "1 missing (None)" in text


def test_whitespace_runs_become_one_space(tokenizer):
    blocks, _ = pack_corpus(
        Dataset.from_dict({"text": ["  the \t cat\u00a0 sat  ", "a  dog"]}), tokenizer, 64
    )
    assert list(blocks["text"]) == ["the cat sat a dog"]


@pytest.mark.parametrize("family", FAMILIES)
def test_streamed_and_in_memory_give_the_same_blocks(tokenizers_by_family, sample_texts, family):
    tokenizer = tokenizers_by_family[family]
    rows = as_rows(documents_of(sample_texts))
    in_memory, memory_stats = pack_corpus(Dataset.from_dict({"text": rows}), tokenizer, 24, batch_size=7)
    streamed, stream_stats = pack_corpus(
        Dataset.from_dict({"text": rows}).to_iterable_dataset(), tokenizer, 24, batch_size=7
    )
    assert isinstance(streamed, IterableDataset)
    assert stream_stats.blocks == 0  # nothing read yet
    assert [row["text"] for row in streamed] == list(in_memory["text"])
    for name in ("lines", "documents", "blocks", "tokens", "long_lines"):
        assert getattr(stream_stats, name) == getattr(memory_stats, name), name
    # A second pass starts the counts again instead of adding to them.
    assert sum(1 for _ in streamed) == len(in_memory)
    assert stream_stats.blocks == memory_stats.blocks


def test_batch_size_does_not_change_the_blocks(tokenizer, sample_texts):
    rows = as_rows(documents_of(sample_texts))
    one, _ = pack_corpus(Dataset.from_dict({"text": rows}), tokenizer, 32, batch_size=1)
    many, _ = pack_corpus(Dataset.from_dict({"text": rows}), tokenizer, 32, batch_size=1000)
    assert list(one["text"]) == list(many["text"])


def test_a_word_longer_than_a_block_is_cut_inside_and_still_fits(tokenizers_by_family):
    tokenizer = tokenizers_by_family["wordpiece"]
    word = "pneumonoultramicroscopicsilicovolcanoconiosis"
    blocks, stats = pack_corpus(Dataset.from_dict({"text": [f"a {word} b"]}), tokenizer, max_seq_length=5)
    assert max(len(ids) for ids in block_tokens(tokenizer, blocks)) <= 5
    assert "".join(blocks["text"]).replace(" ", "") == f"a{word}b"  # no character lost
    assert stats.words_cut > 0  # "##" pieces start blocks as plain pieces: reported


def test_a_line_longer_than_max_chars_is_tokenised_in_pieces_and_kept_whole(tokenizer, sample_texts):
    line = " ".join(sample_texts[:40])
    full, _ = pack_corpus(Dataset.from_dict({"text": [line]}), tokenizer, 128, max_chars=None)
    pieces, _ = pack_corpus(Dataset.from_dict({"text": [line]}), tokenizer, 128, max_chars=500)
    expected = tokenizer(line, add_special_tokens=False)["input_ids"]
    for blocks in (full, pieces):
        tokens = [t for ids in block_tokens(tokenizer, blocks) for t in ids[1:-1]]
        assert tokens == expected


def test_a_50_mb_single_line():
    # A word-level tokenizer of four 99-letter words keeps the 500k-token line cheap; checked by counts
    # and ends.
    words = [letter * 99 for letter in "abcd"]
    vocab = {token: i for i, token in enumerate(["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)]
    )
    tokenizer = _wrap(backend, "[CLS]", "[SEP]", "[UNK]", "[PAD]", "[MASK]")
    unit = " ".join(words) + " "
    line = unit * (50_000_000 // len(unit))
    blocks, stats = pack_corpus(Dataset.from_dict({"text": [line]}), tokenizer, max_seq_length=512)
    tokens = 4 * (50_000_000 // len(unit))
    assert len(line) > 49_999_000
    assert (stats.lines, stats.long_lines, stats.tokens) == (1, 1, tokens)
    assert stats.blocks == len(blocks) == -(-tokens // 510)
    texts = list(blocks["text"])
    assert texts[0].startswith(unit + words[0]) and texts[-1].endswith(unit.strip())
    assert max(len(ids) for ids in block_tokens(tokenizer, blocks.select(range(0, len(blocks), 97)))) <= 512
    assert sum(len(text) + 1 for text in texts) == len(line)  # one space between blocks, none lost


def test_bad_input_gets_clear_errors(tokenizer):
    corpus = Dataset.from_dict({"text": ["hello world"]})
    with pytest.raises(ValueError, match="max_seq_length must be at least 3"):
        pack_corpus(corpus, tokenizer, max_seq_length=2)
    with pytest.raises(ValueError, match="no column 'body'"):
        pack_corpus(corpus, tokenizer, 16, column="body")
    with pytest.raises(ValueError, match="no column 'body'"):
        list(pack_corpus(corpus.to_iterable_dataset(), tokenizer, 16, column="body")[0])
    with pytest.raises(TypeError, match="column 'text' must hold text, but row 0 is int"):
        pack_corpus(Dataset.from_dict({"text": [3, 4]}), tokenizer, 16)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        pack_corpus(corpus, tokenizer, 16, batch_size=0)
    with pytest.raises(TypeError, match="corpus must be a datasets"):
        pack_corpus(["hello"], tokenizer, 16)


def test_a_slow_tokenizer_is_refused_with_the_reason():
    from transformers import BertTokenizerLegacy

    slow = BertTokenizerLegacy(str(minilm_path() / "vocab.txt"))
    assert not slow.is_fast
    with pytest.raises(TypeError, match="fast tokenizer.*offset mappings"):
        pack_corpus(Dataset.from_dict({"text": ["hello"]}), slow, 16)


def _sharded_lines(shards: list[int]):
    for shard in shards:
        for line in range(40):
            yield {"text": f"shard {shard} line {line} holds a few words", "document_id": shard}


def test_a_streamed_corpus_of_many_shards_is_packed_whole_by_a_dataloader_worker(tokenizer):
    # The packed stream is one shard, so one worker packs it; that worker must read every shard of the
    # corpus, not only its own share of them (half the blocks were lost with 2 workers).
    from torch.utils.data import DataLoader

    corpus = IterableDataset.from_generator(_sharded_lines, gen_kwargs={"shards": [0, 1, 2, 3]})
    assert corpus.num_shards == 4
    blocks, _ = pack_corpus(corpus, tokenizer, 32)
    in_process = [row["text"] for row in blocks]
    through_workers = [row["text"] for row in DataLoader(blocks, batch_size=None, num_workers=2)]
    assert sorted(through_workers) == sorted(in_process)
    assert {text.split()[1] for text in in_process} == {"0", "1", "2", "3"}
