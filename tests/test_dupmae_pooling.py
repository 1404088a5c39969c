"""DupMAEPooling: the paper's score, top-k, chunking, save/reload, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

from retromae_st import DupMAELoss, DupMAEPooling, build_dupmae_model, load_dupmae_model
from retromae_st.dupmae_pooling import max_pool_vocab, top_k_nonzero
from retromae_st.vocab_screening import ordered_top_k, screened_top_k, screening_bounds

TEXTS = [
    "the cat sat on the mat",
    "retrieval oriented pre-training of language models",
    "a",
    "",
    "masked auto-encoders reconstruct the input from the sentence embedding",
]


def built_dupmae_model(tiny_model, token_rules="authors"):
    torch.manual_seed(0)
    loss = DupMAELoss(tiny_model, token_rules=token_rules)
    with torch.no_grad():  # a non-zero MLM bias so that its copy is checked too
        loss.mlm_head.predictions.bias.normal_()
    return build_dupmae_model(loss, top_k=16).eval()


@pytest.fixture()
def dupmae_model(tiny_model):
    return built_dupmae_model(tiny_model)


def hand_made_representation(model, text):
    """[CLS] and the top-16 OT vector of one text, computed directly from the encoder and the head: the OT
    max-pool over positions 1..n-1 (``[SEP]`` included, as the authors), or over the non-special ones."""
    pooling = model[1]
    features = model.preprocess([text])
    with torch.no_grad():
        hidden = model[0](dict(features))["token_embeddings"][0]
        ids = features["input_ids"][0]
        ordinary = [
            i
            for i in range(1, ids.numel())
            if pooling.token_rules == "authors" or int(ids[i]) not in pooling.special_token_ids
        ]
        ot = torch.zeros(pooling.vocab_size)
        if ordinary:
            logits = pooling.mlm_head(hidden[ordinary])
            values, indices = logits.max(dim=0).values.topk(16)
            ot[indices] = values
    return hidden[0], ot


@pytest.mark.parametrize("token_rules", ["authors", "skip_special"])
def test_similarity_is_cls_dot_plus_top_k_ot_dot(tiny_model, token_rules):
    dupmae_model = built_dupmae_model(tiny_model, token_rules)
    assert dupmae_model[1].token_rules == token_rules
    embeddings = dupmae_model.encode(TEXTS, convert_to_tensor=True)
    scores = dupmae_model.similarity(embeddings, embeddings)
    by_hand = [hand_made_representation(dupmae_model, text) for text in TEXTS]
    for i, (cls_i, ot_i) in enumerate(by_hand):
        for j, (cls_j, ot_j) in enumerate(by_hand):
            expected = cls_i @ cls_j + ot_i @ ot_j
            torch.testing.assert_close(scores[i, j], expected, atol=1e-3, rtol=1e-4)
    assert dupmae_model.similarity_fn_name == "dot"


@pytest.mark.parametrize(("token_rules", "empty_text_entries"), [("authors", 16), ("skip_special", 0)])
def test_top_k_keeps_exactly_k_entries_or_none_for_empty_text(tiny_model, token_rules, empty_text_entries):
    """An empty text is ``[CLS] [SEP]``: its [SEP] is pooled under the authors' rule, nothing otherwise."""
    dupmae_model = built_dupmae_model(tiny_model, token_rules)
    embeddings = dupmae_model.encode(TEXTS, convert_to_tensor=True)
    nonzero = (embeddings[:, 64:] != 0).sum(dim=1).tolist()
    assert nonzero == [16, 16, 16, empty_text_entries, 16]
    assert embeddings.shape[1] == dupmae_model[1].get_embedding_dimension() == 64 + 30522


def test_relu_activation_keeps_at_most_k_and_only_positive_entries(tiny_model):
    loss = DupMAELoss(tiny_model)
    model = build_dupmae_model(loss, top_k=30000, activation="relu")
    with model[1].sparse_only():
        out = model(model.preprocess(TEXTS[:2]))
    assert "sentence_embedding" not in out
    assert (out["ot_values"] >= 0).all()
    counts = top_k_nonzero(out["ot_values"])
    assert (counts < 30000).all() and (counts > 0).all()


@pytest.fixture
def one_blas_thread():
    """Bit-identity of float32 GEMMs across matrix shapes holds with one thread; with several, MKL splits
    the work by shape and the last bit of a logit can change (the outputs then agree to float32 rounding,
    see ``test_chunked_outputs_agree_with_several_threads``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("bf16_screening", [False, True])
def test_chunked_and_unchunked_outputs_are_identical(dupmae_model, bf16_screening, one_blas_thread):
    pooling = dupmae_model[1]
    pooling.bf16_screening = bf16_screening
    features = dupmae_model.preprocess(TEXTS)
    outputs = {}
    for chunk_size in (10**9, 7, 3, 1):
        pooling.chunk_size = chunk_size
        with torch.no_grad():
            outputs[chunk_size] = dupmae_model(dict(features))
    whole = outputs[10**9]
    for chunk_size in (7, 3, 1):
        chunked = outputs[chunk_size]
        # The max is exact, and chunks of < 4 tokens are padded so that every chunk takes the same GEMM kernel.
        for key in ("ot_indices", "ot_values", "cls_embedding", "sentence_embedding"):
            assert torch.equal(chunked[key], whole[key]), key


def test_chunked_outputs_agree_with_several_threads(dupmae_model):
    pooling = dupmae_model[1]
    features = dupmae_model.preprocess(TEXTS)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        outputs = {}
        for chunk_size in (10**9, 3):
            pooling.chunk_size = chunk_size
            with torch.no_grad():
                outputs[chunk_size] = dupmae_model(dict(features))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outputs[3]["ot_indices"], outputs[10**9]["ot_indices"])
    torch.testing.assert_close(outputs[3]["ot_values"], outputs[10**9]["ot_values"], atol=1e-6, rtol=1e-6)


def random_head_inputs(hidden_size: int, seed: int, scale: float = 1.0):
    """A random DupMAEPooling (non-zero bias) and a batch with 0-4 ordinary tokens in some rows."""
    torch.manual_seed(seed)
    pooling = DupMAEPooling(hidden_size, 30522, top_k=16, special_token_ids=[0, 101, 102]).eval()
    with torch.no_grad():
        pooling.mlm_head.predictions.bias.normal_()
    hidden = torch.randn(12, 40, hidden_size) * scale
    # A length of 1 is [CLS] only: no ordinary token.
    lengths = torch.tensor([40, 1, 2, 3, 4, 5, 17, 33, 39, 1, 25, 8])
    ordinary = torch.arange(40)[None] < lengths[:, None]
    ordinary[:, 0] = False
    return pooling, hidden, ordinary


@pytest.mark.parametrize(
    ("hidden_size", "chunk_size", "top_k", "scale"),
    [(64, 512, 16, 1.0), (64, 5, 1, 1.0), (128, 37, 256, 30.0), (32, 512, 2000, 0.01)],
)
def test_bf16_screening_gives_the_float32_top_k_exactly_on_random_inputs(
    hidden_size, chunk_size, top_k, scale, one_blas_thread
):
    pooling, hidden, ordinary = random_head_inputs(hidden_size, seed=hidden_size + top_k, scale=scale)
    with torch.no_grad():
        pooled = max_pool_vocab(pooling.mlm_head, hidden, ordinary, chunk_size)
        expected_values, expected_indices = ordered_top_k(pooled, top_k)
        indices, values = screened_top_k(pooling.mlm_head, hidden, ordinary, top_k, chunk_size)
    assert torch.equal(values, expected_values)
    assert torch.equal(indices, expected_indices)
    torch.testing.assert_close(values, torch.topk(pooled, top_k, dim=1).values, rtol=0, atol=0)


def test_ordered_top_k_breaks_ties_by_index():
    scores = torch.tensor([[1.0, 3.0, 2.0, 3.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    values, indices = ordered_top_k(scores, 3)
    assert indices.tolist() == [[1, 3, 2], [0, 1, 2]]
    assert values.tolist() == [[3.0, 3.0, 2.0], [0.0, 0.0, 0.0]]


@pytest.mark.parametrize("scale", [1.0, 1000.0])
def test_bf16_screening_bounds_contain_the_float32_values(scale):
    pooling, hidden, ordinary = random_head_inputs(48, seed=3, scale=scale)
    with torch.no_grad():
        pooling.mlm_head.predictions.bias.mul_(scale)
        exact = max_pool_vocab(pooling.mlm_head, hidden, ordinary, 512).double()
        lower, upper, _, _ = screening_bounds(pooling.mlm_head, hidden, ordinary, 512)
    rows = ordinary.any(dim=1)
    assert (lower[rows] <= exact[rows]).all() and (exact[rows] <= upper[rows]).all()
    # and tight enough to prune: few entries can reach the top 16
    candidates = (upper >= torch.topk(lower, 16, dim=1).values[:, -1:])[rows].sum(dim=1)
    assert (candidates < 0.01 * 30522).all()


def test_bf16_screening_is_identical_on_real_inputs(tmp_path, one_blas_thread):
    """all-MiniLM-L6-v2 on real text, with a head tied to its word embeddings (a pre-trained MLM head's layout)."""
    from sentence_transformers.base.modules import Transformer

    from tests.conftest import SAMPLE_CORPUS, minilm_path

    transformer = Transformer(str(minilm_path()), max_seq_length=128)
    embeddings = transformer.auto_model.get_input_embeddings().weight
    pooling = DupMAEPooling(
        384, embeddings.size(0), top_k=256, chunk_size=100, special_token_ids=[0, 100, 101, 102, 103]
    )
    with torch.no_grad():
        pooling.mlm_head.predictions.decoder.weight.copy_(embeddings)
        pooling.mlm_head.predictions.bias.normal_(std=0.1)
    model = SentenceTransformer(modules=[transformer, pooling.eval()], similarity_fn_name="dot", device="cpu")
    texts = SAMPLE_CORPUS.read_text(encoding="utf-8").splitlines()[:24] + ["a", ""]
    outputs = {}
    for screening in (False, True):
        pooling.bf16_screening = screening
        with torch.no_grad():
            outputs[screening] = model(model.preprocess(texts))
    for key in ("ot_indices", "ot_values", "sentence_embedding"):
        assert torch.equal(outputs[True][key], outputs[False][key]), key


def test_bf16_screening_is_skipped_where_it_does_not_apply(dupmae_model):
    pooling = dupmae_model[1]
    hidden = torch.zeros(1, 3, pooling.hidden_size)
    pooling.bf16_screening = True
    with torch.no_grad():
        assert pooling.uses_bf16_screening(hidden)
        assert not pooling.uses_bf16_screening(hidden.double())
    assert not pooling.uses_bf16_screening(hidden.requires_grad_())
    pooling.bf16_screening = False
    with torch.no_grad():
        assert not pooling.uses_bf16_screening(hidden)
    relu = DupMAEPooling(8, 100, top_k=4, activation="relu", bf16_screening=True)
    with torch.no_grad():
        assert not relu.uses_bf16_screening(torch.zeros(1, 3, 8))


def test_save_and_reload_give_identical_embeddings(dupmae_model, tmp_path):
    before = dupmae_model.encode(TEXTS, convert_to_tensor=True)
    dupmae_model.save(str(tmp_path / "model"))
    assert (tmp_path / "model" / "1_DupMAEPooling" / "model.safetensors").is_file()
    for reloaded in (
        load_dupmae_model(tmp_path / "model"),
        SentenceTransformer(str(tmp_path / "model"), trust_remote_code=True),
    ):
        assert isinstance(reloaded[1], DupMAEPooling)
        assert reloaded.similarity_fn_name == "dot"
        assert torch.equal(reloaded.encode(TEXTS, convert_to_tensor=True), before)


@pytest.mark.parametrize("token_rules", ["authors", "skip_special"])
def test_saved_folder_keeps_the_token_rules(tiny_model, tmp_path, token_rules):
    model = built_dupmae_model(tiny_model, token_rules)
    before = model.encode(TEXTS, convert_to_tensor=True)
    model.save(str(tmp_path / "model"))
    config = json.loads((tmp_path / "model" / "1_DupMAEPooling" / "config.json").read_text())
    assert config["token_rules"] == token_rules
    reloaded = load_dupmae_model(tmp_path / "model")
    assert reloaded[1].token_rules == token_rules
    assert torch.equal(reloaded.encode(TEXTS, convert_to_tensor=True), before)


def test_folder_saved_without_token_rules_loads_with_the_old_rule(tiny_model, tmp_path):
    """Folders of earlier versions have no ``token_rules`` key: they were trained and pooled without special
    tokens, so they must reload with ``"skip_special"`` and give the embeddings they gave before."""
    old = built_dupmae_model(tiny_model, "skip_special")
    before = old.encode(TEXTS, convert_to_tensor=True)
    old.save(str(tmp_path / "old"))
    config_file = tmp_path / "old" / "1_DupMAEPooling" / "config.json"
    config = json.loads(config_file.read_text())
    del config["token_rules"]
    config_file.write_text(json.dumps(config))
    reloaded = load_dupmae_model(tmp_path / "old")
    assert reloaded[1].token_rules == "skip_special"
    assert torch.equal(reloaded.encode(TEXTS, convert_to_tensor=True), before)
    # Under the authors' rule the same weights give other embeddings (the [SEP] is pooled too).
    reloaded[1].token_rules = "authors"
    assert not torch.equal(reloaded.encode(TEXTS, convert_to_tensor=True), before)


def test_projection_changes_cls_size_and_round_trips(tiny_model, tmp_path):
    model = build_dupmae_model(DupMAELoss(tiny_model), top_k=8, projection_dim=16)
    embeddings = model.encode(TEXTS[:2], convert_to_tensor=True)
    assert embeddings.shape[1] == 16 + 30522
    model.save(str(tmp_path / "m"))
    assert torch.equal(
        load_dupmae_model(tmp_path / "m").encode(TEXTS[:2], convert_to_tensor=True), embeddings
    )


def test_pooling_head_is_a_copy_of_the_trained_head(tiny_model):
    loss = DupMAELoss(tiny_model)
    pooling = build_dupmae_model(loss)[1]
    head, copy = loss.mlm_head.predictions, pooling.mlm_head.predictions
    assert torch.equal(head.decoder.weight, copy.decoder.weight)
    assert head.decoder.weight.data_ptr() != copy.decoder.weight.data_ptr()
    assert copy.decoder.bias is copy.bias


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"top_k": 0}, ValueError, "top_k"),
        ({"top_k": -3}, ValueError, "top_k"),
        ({"top_k": 1001}, ValueError, "top_k"),
        ({"top_k": 2.5}, TypeError, "top_k"),
        ({"projection_dim": 0}, ValueError, "projection_dim"),
        ({"projection_dim": -1}, ValueError, "projection_dim"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
        ({"activation": "softmax"}, ValueError, "activation"),
        ({"special_token_ids": [1000]}, ValueError, "special_token_ids"),
        ({"token_rules": "authors_v1"}, ValueError, "token_rules"),
        ({"bf16_screening": "yes"}, TypeError, "bf16_screening"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        DupMAEPooling(hidden_size=8, vocab_size=1000, **kwargs)


def test_build_needs_a_dupmae_loss(tiny_model):
    with pytest.raises(TypeError, match="DupMAELoss"):
        build_dupmae_model(tiny_model)


FRESH_PROCESS_LOAD = """
import sys
import numpy as np
from sentence_transformers import SentenceTransformer

path, texts, out = sys.argv[1], sys.argv[2].split("|"), sys.argv[3]
assert "retromae_st" not in sys.modules
try:
    SentenceTransformer(path, device="cpu")
    plain = "loaded"
except ValueError as error:
    plain = str(error)
trusted = SentenceTransformer(path, device="cpu", trust_remote_code=True).encode(texts)
from retromae_st import load_dupmae_model

loaded = load_dupmae_model(path, device="cpu").encode(texts)
np.savez(out, trusted=trusted, loaded=loaded, plain=np.array(plain))
"""


def test_a_fresh_process_reloads_identical_embeddings(tiny_bert_dir, tmp_path):
    """A new Python process (retromae_st not imported) reloads a saved DupMAE model. Plain
    ``SentenceTransformer(path)`` is refused by sentence-transformers 6 (a module class outside its
    namespace needs ``trust_remote_code=True``: see ``load_dupmae_model``); with the flag, or with
    ``load_dupmae_model``, the embeddings are identical to the saved model's."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from sentence_transformers.base.modules import Transformer

    transformer = Transformer(str(tiny_bert_dir), max_seq_length=64)
    pooling = DupMAEPooling(64, 30522, top_k=16, special_token_ids=[0, 100, 101, 102, 103])
    with torch.no_grad():  # built by __init__, not from a trained head: its bias must survive the round trip
        pooling.mlm_head.predictions.bias.normal_()
    model = SentenceTransformer(modules=[transformer, pooling], similarity_fn_name="dot", device="cpu").eval()
    texts = [text for text in TEXTS if text]
    expected = model.encode(texts)
    model.save(str(tmp_path / "model"))

    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": repo + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = tmp_path / "out.npz"
    subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS_LOAD, str(tmp_path / "model"), "|".join(texts), str(out)],
        check=True,
        env=env,
        cwd=tmp_path,
    )
    result = np.load(out)
    assert "trust_remote_code=True" in str(result["plain"])
    for key in ("trusted", "loaded"):
        np.testing.assert_allclose(result[key], expected, atol=1e-6, rtol=0)
