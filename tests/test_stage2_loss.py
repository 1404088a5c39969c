"""RetroMAEContrastiveLoss: the contrastive term is ST's MNRL, the MAE term is RetroMAELoss, weights, errors."""

from __future__ import annotations

import pytest
import torch
from sentence_transformers.base.losses.merged_forward import merge_feature_batches
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
from sentence_transformers.util import dot_score

from retromae_st import RetroMAELoss, load_cls_model
from retromae_st.retromae_contrastive_loss import RetroMAEContrastiveLoss


def tokenize_columns(model, columns):
    return [model.tokenize(texts) for texts in columns]


@pytest.fixture()
def triplets(sample_texts):
    texts = sample_texts[:18]
    return [texts[0:6], [t[: len(t) // 2] for t in texts[0:6]], texts[6:12]]


@pytest.fixture()
def eval_model(tiny_model):
    tiny_model.eval()  # no dropout: two forwards of the same text give the same embedding
    return tiny_model


@pytest.mark.parametrize("num_columns", [2, 3])
@pytest.mark.parametrize("scale, similarity", [(20.0, None), (1.0, dot_score)])
def test_contrastive_term_equals_mnrl(eval_model, triplets, num_columns, scale, similarity):
    features = tokenize_columns(eval_model, triplets[:num_columns])
    kwargs = {"scale": scale} if similarity is None else {"scale": scale, "similarity_fct": similarity}
    loss = RetroMAEContrastiveLoss(eval_model, **kwargs)
    mnrl = MultipleNegativesRankingLoss(eval_model, **kwargs)
    with torch.no_grad():
        terms = loss(features)
        expected = mnrl(features, None)
    assert set(terms) == {"contrastive", "encoder_mlm", "decoder_mlm"}
    assert torch.allclose(terms["contrastive"], expected, atol=1e-6)


def test_given_mnrl_instance_is_used(eval_model, triplets):
    features = tokenize_columns(eval_model, triplets)
    mnrl = MultipleNegativesRankingLoss(eval_model, scale=7.0, directions=("query_to_doc", "doc_to_query"))
    loss = RetroMAEContrastiveLoss(eval_model, contrastive_loss=mnrl, mae_weight=0.0)
    with torch.no_grad():
        assert torch.allclose(loss(features)["contrastive"], mnrl(features, None), atol=1e-6)


def test_gradient_reaches_encoder_decoder_and_mlm_head(tiny_model, triplets):
    loss = RetroMAEContrastiveLoss(tiny_model)
    terms = loss(tokenize_columns(tiny_model, triplets))
    torch.stack(list(terms.values())).sum().backward()
    encoder = tiny_model[0].auto_model
    parts = {
        "encoder (last layer)": encoder.encoder.layer[-1].output.dense.weight,
        "word embeddings": encoder.embeddings.word_embeddings.weight,
        "decoder": loss.mae_loss.decoder.query.weight,
        "MLM head transform": loss.mae_loss.mlm_head.predictions.transform.dense.weight,
    }
    for name, parameter in parts.items():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_mae_weight_zero_skips_mae_exactly(tiny_model, triplets, monkeypatch):
    loss = RetroMAEContrastiveLoss(tiny_model, mae_weight=0.0)
    monkeypatch.setattr(loss, "mae_terms", lambda columns: pytest.fail("MAE term computed with weight 0"))
    terms = loss(tokenize_columns(tiny_model, triplets))
    assert set(terms) == {"contrastive"}
    terms["contrastive"].backward()
    assert loss.mae_loss.decoder.query.weight.grad is None


def test_contrastive_weight_zero_gives_exactly_the_mae_loss(eval_model, triplets, monkeypatch):
    features = tokenize_columns(eval_model, triplets)
    loss = RetroMAEContrastiveLoss(eval_model, contrastive_weight=0.0)
    monkeypatch.setattr(loss, "contrastive_term", lambda columns: pytest.fail("contrastive term computed"))
    generator = loss.mask_generator(features[0]["input_ids"].device)
    state = generator.get_state()
    torch.manual_seed(3)  # decoder dropout
    terms = loss(features)
    merged = merge_feature_batches(features)
    generator.set_state(state)
    torch.manual_seed(3)
    expected = loss.mae_loss.compute_loss_terms(merged, loss.mae_loss.make_masks(merged, generator))
    assert set(terms) == {"encoder_mlm", "decoder_mlm"}
    for name in terms:
        assert torch.equal(terms[name], expected[name]), name


def test_weights_scale_each_term(eval_model, triplets):
    features = tokenize_columns(eval_model, triplets)
    mae = RetroMAELoss(eval_model)
    torch.manual_seed(5)
    plain = RetroMAEContrastiveLoss(eval_model, mae)(features)
    torch.manual_seed(5)
    weighted = RetroMAEContrastiveLoss(eval_model, mae, mae_weight=0.5, contrastive_weight=3.0)(features)
    assert torch.allclose(weighted["contrastive"], 3.0 * plain["contrastive"])
    for name in ("encoder_mlm", "decoder_mlm"):
        assert torch.allclose(weighted[name], 0.5 * plain[name]), name


@pytest.mark.parametrize(
    "mae_columns, expected", [("all", [0, 1, 2]), ("anchor", [0]), ("documents", [1, 2]), ([2], [2])]
)
def test_mae_columns_choose_the_reconstructed_texts(eval_model, triplets, mae_columns, expected):
    features = tokenize_columns(eval_model, triplets)
    loss = RetroMAEContrastiveLoss(eval_model, contrastive_weight=0.0, mae_columns=mae_columns)
    generator = loss.mask_generator(features[0]["input_ids"].device)
    state = generator.get_state()
    torch.manual_seed(11)  # decoder dropout
    terms = loss(features)
    chosen = [features[i] for i in expected]
    merged = chosen[0] if len(chosen) == 1 else merge_feature_batches(chosen)
    generator.set_state(state)
    torch.manual_seed(11)
    reference = loss.mae_loss.compute_loss_terms(merged, loss.mae_loss.make_masks(merged, generator))
    assert torch.equal(terms["decoder_mlm"], reference["decoder_mlm"])


def test_checkpoint_state_is_the_decoder_and_head(tiny_model):
    loss = RetroMAEContrastiveLoss(tiny_model)
    state = loss.training_state_dict()
    assert state and all(key.startswith("mae_loss.") for key in state)
    assert any(key.startswith("mae_loss.decoder.") for key in state)
    assert set(state) == {f"mae_loss.{key}" for key in loss.mae_loss.training_state_dict()}


# -- errors -------------------------------------------------------------------------------------------


def test_one_column_is_rejected(tiny_model, triplets):
    loss = RetroMAEContrastiveLoss(tiny_model)
    with pytest.raises(ValueError, match=r"\(anchor, positive.*1 column"):
        loss(tokenize_columns(tiny_model, triplets[:1]))


def test_label_column_is_rejected(tiny_model, triplets):
    loss = RetroMAEContrastiveLoss(tiny_model)
    with pytest.raises(ValueError, match="'label' column"):
        loss(tokenize_columns(tiny_model, triplets[:2]), torch.ones(6))


def test_batch_of_one_is_rejected(tiny_model, triplets):
    loss = RetroMAEContrastiveLoss(tiny_model)
    with pytest.raises(ValueError, match="batch of 1 row.*in-batch negatives.*dataloader_drop_last"):
        loss(tokenize_columns(tiny_model, [column[:1] for column in triplets]))
    # Without the contrastive term a single row is fine.
    terms = RetroMAEContrastiveLoss(tiny_model, contrastive_weight=0.0)(
        tokenize_columns(tiny_model, [column[:1] for column in triplets])
    )
    assert torch.isfinite(terms["decoder_mlm"])


def test_empty_batch_is_rejected(tiny_model):
    loss = RetroMAEContrastiveLoss(tiny_model)
    empty = {
        "input_ids": torch.zeros(0, 4, dtype=torch.long),
        "attention_mask": torch.zeros(0, 4, dtype=torch.long),
    }
    with pytest.raises(ValueError, match="empty batch"):
        loss([empty, empty])


def test_mae_texts_without_content_give_a_zero_gradient_mae_step(tiny_model, caplog):
    loss = RetroMAEContrastiveLoss(tiny_model, mae_columns="anchor")
    features = tokenize_columns(tiny_model, [["", " "], ["a passage", "another passage"]])
    with caplog.at_level("WARNING"):
        terms = loss(features)
    assert terms["encoder_mlm"].item() == 0.0 and terms["decoder_mlm"].item() == 0.0
    assert terms["contrastive"] > 0
    assert loss.mae_loss.skipped_batches == 1 and "nothing to reconstruct" in caplog.text
    assert loss.get_config_dict()["mae_token_rules"] == "authors"


def test_untokenised_column_is_rejected(tiny_model):
    loss = RetroMAEContrastiveLoss(tiny_model)
    with pytest.raises(ValueError, match="column 1"):
        loss([tiny_model.tokenize(["a", "b"]), {"sentence_embedding": torch.zeros(2, 4)}])


def test_mismatched_column_sizes_are_rejected(tiny_model):
    loss = RetroMAEContrastiveLoss(tiny_model)
    with pytest.raises(ValueError, match=r"as many rows.*\[2, 3\]"):
        loss(tokenize_columns(tiny_model, [["a", "b"], ["c", "d", "e"]]))


def test_mae_column_out_of_range_is_rejected(tiny_model, triplets):
    loss = RetroMAEContrastiveLoss(tiny_model, mae_columns=[0, 2])
    with pytest.raises(ValueError, match="names column 2.*only 2 columns"):
        loss(tokenize_columns(tiny_model, triplets[:2]))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"mae_weight": 0.0, "contrastive_weight": 0.0}, ValueError, "both 0"),
        ({"mae_weight": -1.0}, ValueError, "mae_weight"),
        ({"contrastive_weight": float("nan")}, ValueError, "contrastive_weight"),
        ({"mae_weight": "1"}, TypeError, "mae_weight"),
        ({"mae_columns": "queries"}, ValueError, "mae_columns"),
        ({"mae_columns": []}, ValueError, "mae_columns"),
        ({"mae_columns": [0, 0]}, ValueError, "twice"),
        ({"mae_loss": "bert"}, ValueError, "mae_loss"),
        ({"mae_loss": object()}, TypeError, "mae_loss"),
        ({"contrastive_loss": object()}, TypeError, "contrastive_loss"),
    ],
)
def test_bad_arguments_are_named(tiny_model, kwargs, error, match):
    with pytest.raises(error, match=match):
        RetroMAEContrastiveLoss(tiny_model, **kwargs)


def test_contrastive_settings_conflict_with_given_instance(tiny_model):
    mnrl = MultipleNegativesRankingLoss(tiny_model)
    with pytest.raises(ValueError, match="scale.*given contrastive_loss"):
        RetroMAEContrastiveLoss(tiny_model, contrastive_loss=mnrl, scale=10.0)


def test_parts_built_on_another_model_are_rejected(tiny_model, tiny_bert_dir):
    other = load_cls_model(str(tiny_bert_dir), max_seq_length=64)
    with pytest.raises(ValueError, match="mae_loss was built on another model"):
        RetroMAEContrastiveLoss(tiny_model, mae_loss=RetroMAELoss(other))
    with pytest.raises(ValueError, match="contrastive_loss was built on another model"):
        RetroMAEContrastiveLoss(tiny_model, contrastive_loss=MultipleNegativesRankingLoss(other))


def test_config_and_citation(tiny_model):
    loss = RetroMAEContrastiveLoss(tiny_model, mae_columns="documents", scale=10.0)
    config = loss.get_config_dict()
    assert config["mae_loss"] == "RetroMAELoss"
    assert config["contrastive_scale"] == 10.0 and config["mae_columns"] == "documents"
    assert "2208.00231" in loss.citation and "2205.12035" in loss.citation


# -- prepare_contrastive_dataset ----------------------------------------------------------------------


def test_prepare_contrastive_dataset_drops_empty_rows_and_names_bad_values():
    from datasets import Dataset

    from retromae_st.data import prepare_contrastive_dataset

    data = Dataset.from_dict({"q": ["a", "", "c", None], "p": ["x", "y", " ", "w"], "extra": [1, 2, 3, 4]})
    cleaned, dropped = prepare_contrastive_dataset(
        data.add_item({"q": "d", "p": "z", "extra": 5}), columns=["q", "p"]
    )
    assert cleaned.column_names == ["q", "p"] and cleaned["q"] == ["a", "d"]
    assert dropped.reasons == {"empty or whitespace-only": 2, "missing (None)": 1}
    with pytest.raises(TypeError, match="column 'extra'.*row 0 is int"):
        prepare_contrastive_dataset(data)
    with pytest.raises(ValueError, match="'label' column"):
        prepare_contrastive_dataset(Dataset.from_dict({"a": ["x"], "b": ["y"], "label": [1]}))
    with pytest.raises(ValueError, match="no column 'nope'"):
        prepare_contrastive_dataset(data, columns=["q", "nope"])
    with pytest.raises(ValueError, match="1 row.*at least 2 rows"):
        prepare_contrastive_dataset(data, columns=["q", "p"])
    with pytest.raises(ValueError, match="anchor, positive"):
        prepare_contrastive_dataset(data, columns=["q"])


def test_dupmae_as_the_mae_term_adds_the_bag_of_words_term(tiny_model, triplets):
    from retromae_st import DupMAELoss

    loss = RetroMAEContrastiveLoss(tiny_model, mae_loss="dupmae")
    assert isinstance(loss.mae_loss, DupMAELoss)
    terms = loss(tokenize_columns(tiny_model, triplets))
    assert set(terms) == {"contrastive", "encoder_mlm", "decoder_mlm", "bow"}
    assert all(torch.isfinite(value) for value in terms.values())
