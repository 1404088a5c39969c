"""DupMAEPooling: the paper's score, top-k, chunking, save/reload, bad input."""

from __future__ import annotations

import pytest
import torch
from sentence_transformers import SentenceTransformer

from retromae_st import DupMAELoss, DupMAEPooling, build_dupmae_model, load_dupmae_model
from retromae_st.dupmae_pooling import top_k_nonzero

TEXTS = [
    "the cat sat on the mat",
    "retrieval oriented pre-training of language models",
    "a",
    "",
    "masked auto-encoders reconstruct the input from the sentence embedding",
]


@pytest.fixture()
def dupmae_model(tiny_model):
    torch.manual_seed(0)
    loss = DupMAELoss(tiny_model)
    with torch.no_grad():  # a non-zero MLM bias so that its copy is checked too
        loss.mlm_head.predictions.bias.normal_()
    return build_dupmae_model(loss, top_k=16).eval()


def hand_made_representation(model, text):
    """[CLS] and the top-16 OT vector of one text, computed directly from the encoder and the head."""
    pooling = model[1]
    features = model.preprocess([text])
    with torch.no_grad():
        hidden = model[0](dict(features))["token_embeddings"][0]
        ids = features["input_ids"][0]
        ordinary = [i for i in range(1, ids.numel()) if int(ids[i]) not in pooling.special_token_ids]
        ot = torch.zeros(pooling.vocab_size)
        if ordinary:
            logits = pooling.mlm_head(hidden[ordinary])
            values, indices = logits.max(dim=0).values.topk(16)
            ot[indices] = values
    return hidden[0], ot


def test_similarity_is_cls_dot_plus_top_k_ot_dot(dupmae_model):
    embeddings = dupmae_model.encode(TEXTS, convert_to_tensor=True)
    scores = dupmae_model.similarity(embeddings, embeddings)
    by_hand = [hand_made_representation(dupmae_model, text) for text in TEXTS]
    for i, (cls_i, ot_i) in enumerate(by_hand):
        for j, (cls_j, ot_j) in enumerate(by_hand):
            expected = cls_i @ cls_j + ot_i @ ot_j
            torch.testing.assert_close(scores[i, j], expected, atol=1e-3, rtol=1e-4)
    assert dupmae_model.similarity_fn_name == "dot"


def test_top_k_keeps_exactly_k_entries_or_none_for_empty_text(dupmae_model):
    embeddings = dupmae_model.encode(TEXTS, convert_to_tensor=True)
    nonzero = (embeddings[:, 64:] != 0).sum(dim=1).tolist()
    assert nonzero == [16, 16, 16, 0, 16]
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


def test_chunked_and_unchunked_outputs_are_identical(dupmae_model):
    pooling = dupmae_model[1]
    features = dupmae_model.preprocess(TEXTS)
    outputs = {}
    for chunk_size in (10**9, 7, 3, 1):
        pooling.chunk_size = chunk_size
        with torch.no_grad():
            outputs[chunk_size] = dupmae_model(dict(features))
    whole = outputs[10**9]
    for chunk_size in (7, 3, 1):
        chunked = outputs[chunk_size]
        assert torch.equal(chunked["ot_indices"], whole["ot_indices"])
        assert torch.equal(chunked["cls_embedding"], whole["cls_embedding"])
        # The max is exact; only the matmul's blocking (rows per call) can move the last float bit.
        torch.testing.assert_close(chunked["ot_values"], whole["ot_values"], atol=1e-6, rtol=1e-6)


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
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        DupMAEPooling(hidden_size=8, vocab_size=1000, **kwargs)


def test_build_needs_a_dupmae_loss(tiny_model):
    with pytest.raises(TypeError, match="DupMAELoss"):
        build_dupmae_model(tiny_model)
