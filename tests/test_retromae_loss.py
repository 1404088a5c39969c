"""RetroMAELoss: construction, the math of each term, gradients, bad input."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Pooling

from retromae_st import EnhancedDecoderLayer, RetroMAELoss, load_cls_model, save_as_masked_lm
from retromae_st.mlm_head import masked_lm_loss
from tests.conftest import average_loss_terms, train_on


def features_of(model, texts):
    return model.preprocess(texts)


def test_loss_returns_named_finite_terms(tiny_model, sample_texts):
    loss = RetroMAELoss(tiny_model)
    terms = loss([features_of(tiny_model, sample_texts[:8])])
    assert set(terms) == {"encoder_mlm", "decoder_mlm"}
    for value in terms.values():
        assert value.ndim == 0 and torch.isfinite(value)


def test_gradient_reaches_encoder_decoder_and_head(tiny_model, sample_texts):
    loss = RetroMAELoss(tiny_model)
    terms = loss([features_of(tiny_model, sample_texts[:8])])
    sum(terms.values()).backward()
    encoder_layer = tiny_model[0].auto_model.encoder.layer[0].attention.self.query.weight
    for name, parameter in [
        ("encoder", encoder_layer),
        ("decoder", loss.decoder.query.weight),
        ("head", loss.mlm_head.predictions.transform.dense.weight),
        ("word embeddings", tiny_model[0].auto_model.embeddings.word_embeddings.weight),
    ]:
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_head_is_tied_to_word_embeddings(tiny_model):
    loss = RetroMAELoss(tiny_model)
    embeddings = tiny_model[0].auto_model.embeddings.word_embeddings.weight
    assert loss.mlm_head.predictions.decoder.weight is embeddings
    assert "mlm_head.predictions.decoder.weight" not in loss.training_state_dict()


def test_pretrained_head_is_loaded_when_checkpoint_has_one(tmp_path, tokenizer):
    from transformers import BertForMaskedLM

    from tests.conftest import build_tiny_bert

    path = build_tiny_bert(tmp_path / "mlm", tokenizer, with_mlm_head=True, seed=3)
    reference = BertForMaskedLM.from_pretrained(path)
    loss = RetroMAELoss(load_cls_model(str(path)))
    assert torch.equal(
        loss.mlm_head.predictions.transform.dense.weight, reference.cls.predictions.transform.dense.weight
    )
    assert torch.equal(loss.mlm_head.predictions.bias, reference.cls.predictions.bias)


def test_gathered_mlm_loss_equals_full_vocabulary_loss(tiny_model):
    loss = RetroMAELoss(tiny_model)
    hidden = torch.randn(3, 7, 64)
    labels = torch.randint(0, 1000, (3, 7))
    labels[torch.rand(3, 7) < 0.5] = -100
    full = F.cross_entropy(
        loss.mlm_head(hidden).view(-1, loss.vocab_size), labels.view(-1), ignore_index=-100
    )
    assert torch.allclose(masked_lm_loss(loss.mlm_head, hidden, labels), full, atol=1e-6)


def reference_decoder_layer(layer: EnhancedDecoderLayer, query, key_value, visible):
    """The authors' BertLayerForDecoder math with an explicit additive mask."""
    heads = layer.num_attention_heads

    def split(x):
        b, n, h = x.shape
        return x.view(b, n, heads, h // heads).transpose(1, 2)

    q, k, v = split(layer.query(query)), split(layer.key(key_value)), split(layer.value(key_value))
    scores = q @ k.transpose(-1, -2) / (q.size(-1) ** 0.5)
    scores = scores + (1.0 - visible[:, None].float()) * torch.finfo(scores.dtype).min
    context = (scores.softmax(-1) @ v).transpose(1, 2).flatten(2)
    attended = layer.attention_norm(layer.attention_output(context) + query)
    return layer.output_norm(layer.output(layer.activation(layer.intermediate(attended))) + attended)


def test_sdpa_decoder_equals_additive_mask_attention():
    torch.manual_seed(0)
    layer = EnhancedDecoderLayer(hidden_size=32, num_attention_heads=4, intermediate_size=64).eval()
    query, key_value = torch.randn(2, 9, 32), torch.randn(2, 9, 32)
    visible = torch.rand(2, 9, 9) < 0.5
    visible[:, :, 0] = True
    assert torch.allclose(
        layer(query, key_value, visible), reference_decoder_layer(layer, query, key_value, visible), atol=1e-5
    )


def test_decoder_query_and_key_value_streams_follow_the_paper(tiny_model, sample_texts):
    loss = RetroMAELoss(tiny_model).eval()
    features = features_of(tiny_model, sample_texts[:2])
    cls = torch.randn(2, 64)
    query, key_value = loss.decoder_inputs(cls, features["input_ids"])
    embeddings = tiny_model[0].auto_model.embeddings
    length = features["input_ids"].size(1)
    positions = embeddings.position_embeddings.weight[:length]
    assert torch.allclose(query, cls[:, None] + positions[None])
    assert torch.equal(key_value[:, 0], cls)
    assert torch.allclose(key_value[:, 1:], embeddings(input_ids=features["input_ids"])[:, 1:])


def test_training_steps_lower_both_terms(tiny_model, sample_texts):
    torch.manual_seed(0)
    loss = RetroMAELoss(tiny_model)
    batches = [features_of(tiny_model, sample_texts[i : i + 16]) for i in range(0, 16 * 50, 16)]
    before = average_loss_terms(loss, batches[:4])
    train_on(loss, batches, lr=1e-3)
    after = average_loss_terms(loss, batches[:4])
    assert after["encoder_mlm"] < before["encoder_mlm"] - 0.5
    assert after["decoder_mlm"] < before["decoder_mlm"] - 0.5


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"encoder_mask_ratio": 0.0}, ValueError, "encoder_mask_ratio"),
        ({"encoder_mask_ratio": 1.0}, ValueError, "encoder_mask_ratio"),
        ({"decoder_mask_ratio": 1.5}, ValueError, "decoder_mask_ratio"),
        ({"decoder_mask_ratio": -0.1}, ValueError, "decoder_mask_ratio"),
        ({"decoder_mask_ratio": "0.5"}, TypeError, "decoder_mask_ratio"),
        ({"decoder_pool_size": 0}, ValueError, "decoder_pool_size"),
        ({"token_rules": "skip_unk"}, ValueError, "token_rules"),
    ],
)
def test_bad_arguments_are_named(tiny_model, kwargs, error, match):
    with pytest.raises(error, match=match):
        RetroMAELoss(tiny_model, **kwargs)


def test_model_without_cls_pooling_is_rejected(tiny_bert_dir):
    mean_model = load_cls_model(str(tiny_bert_dir))
    mean_model[1] = Pooling(64, pooling_mode="mean")
    with pytest.raises(ValueError, match="cls"):
        RetroMAELoss(mean_model)
    with pytest.raises(TypeError, match="SentenceTransformer"):
        RetroMAELoss(torch.nn.Linear(2, 2))


def test_empty_whitespace_and_one_word_texts_give_finite_losses(tiny_model):
    loss = RetroMAELoss(tiny_model)
    terms = loss([features_of(tiny_model, ["", "   ", "word", "a", "two words", "\t\n"])])
    for value in terms.values():
        assert torch.isfinite(value)


@pytest.mark.parametrize(
    ("token_rules", "texts"), [("authors", ["", "  ", "\n"]), ("skip_special", ["🙂", "🎉 🙂", "[UNK]"])]
)
def test_batch_with_nothing_to_reconstruct_is_a_zero_gradient_step(tiny_model, caplog, token_rules, texts):
    """No raise mid-run: zero terms connected to every parameter (zero gradients), counted, warned."""
    loss = RetroMAELoss(tiny_model, token_rules=token_rules)
    features = features_of(tiny_model, texts)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            terms = loss([features])
            assert set(terms) == {"encoder_mlm", "decoder_mlm"}
            assert all(value.item() == 0.0 and value.requires_grad for value in terms.values())
            loss.zero_grad(set_to_none=True)
            sum(terms.values()).backward()
            grads = [p.grad for p in loss.parameters() if p.requires_grad]
            assert len(grads) > 10 and all(grad is not None and not grad.any() for grad in grads)
    assert loss.skipped_batches == 3
    warnings = [r.message for r in caplog.records if "nothing to reconstruct" in r.getMessage()]
    assert len(warnings) == 2  # at the 1st and 2nd such batch (then the 4th, 8th, ...)
    assert "2 such batch(es) so far" in caplog.records[-1].getMessage()


def test_unk_only_batch_is_reconstructed_under_the_authors_rule(tiny_model):
    """The authors' collator predicts [UNK] in the decoder; the old rule has nothing to predict there."""
    features = features_of(tiny_model, ["🙂", "🎉 🙂"])
    loss = RetroMAELoss(tiny_model)
    assert loss.token_rules == "authors"
    terms = loss([features])
    assert terms["decoder_mlm"] > 0 and terms["encoder_mlm"].item() == 0.0
    terms["decoder_mlm"].backward()
    assert loss.decoder.query.weight.grad.abs().sum() > 0
    assert loss.skipped_batches == 0
    assert RetroMAELoss(tiny_model, token_rules="skip_special")([features])["decoder_mlm"].item() == 0.0


def test_token_rules_are_in_the_config(tiny_model):
    assert RetroMAELoss(tiny_model).get_config_dict()["token_rules"] == "authors"
    assert (
        RetroMAELoss(tiny_model, token_rules="skip_special").get_config_dict()["token_rules"]
        == "skip_special"
    )


def test_overlong_texts_are_truncated_with_a_warning(tiny_model, caplog):
    loss = RetroMAELoss(tiny_model)
    with caplog.at_level(logging.WARNING):
        terms = loss([features_of(tiny_model, ["word " * 5000, "short text"])])
    assert all(torch.isfinite(v) for v in terms.values())
    assert "max_seq_length" in caplog.text


def test_wrong_number_of_columns_is_a_clear_error(tiny_model):
    loss = RetroMAELoss(tiny_model)
    features = features_of(tiny_model, ["a text"])
    with pytest.raises(ValueError, match="exactly one text column"):
        loss([features, features])


def test_export_as_masked_lm_round_trips(tiny_model, sample_texts, tmp_path):
    from transformers import BertForMaskedLM

    loss = RetroMAELoss(tiny_model).eval()
    with torch.no_grad():
        loss.mlm_head.predictions.bias.normal_()
    save_as_masked_lm(tiny_model, loss, str(tmp_path / "mlm"))
    masked_lm = BertForMaskedLM.from_pretrained(tmp_path / "mlm").eval()
    features = features_of(tiny_model, sample_texts[:3])
    with torch.no_grad():
        ours = loss.mlm_head(tiny_model(dict(features))["token_embeddings"])
        theirs = masked_lm(input_ids=features["input_ids"], attention_mask=features["attention_mask"]).logits
    assert torch.allclose(ours, theirs, atol=1e-5)

    reloaded = load_cls_model(str(tmp_path / "mlm"))
    assert isinstance(reloaded, SentenceTransformer)
    expected = tiny_model.encode(sample_texts[:3], convert_to_tensor=True)
    assert torch.allclose(reloaded.encode(sample_texts[:3], convert_to_tensor=True), expected, atol=1e-6)
    # A new loss on the exported checkpoint continues with the trained head.
    resumed = RetroMAELoss(load_cls_model(str(tmp_path / "mlm")))
    assert torch.equal(resumed.mlm_head.predictions.bias, loss.mlm_head.predictions.bias)


def test_load_cls_model_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_cls_model(str(tmp_path / "nope" / "model"))


def test_full_length_warning_is_off_for_packed_blocks(tiny_model, caplog):
    loss = RetroMAELoss(tiny_model)
    # What pretrain(pack=True) sets: packed blocks fill max_seq_length exactly.
    loss.warn_on_full_length = False
    with caplog.at_level(logging.WARNING):
        loss([features_of(tiny_model, ["word " * 5000, "short text"])])
    assert "max_seq_length" not in caplog.text


def test_packed_pretrain_does_not_warn_of_truncation(tiny_bert_dir, sample_texts, tmp_path, caplog):
    from datasets import Dataset

    from retromae_st.pretraining import pretrain

    with caplog.at_level(logging.WARNING):
        result = pretrain(
            str(tiny_bert_dir),
            Dataset.from_dict({"text": sample_texts[:200]}),
            str(tmp_path / "run"),
            max_steps=2,
            batch_size=4,
            max_seq_length=32,
            disable_tqdm=True,
        )
    assert result.packing.blocks > 0 and result.packing.fill_rate > 0.8  # blocks do fill max_seq_length
    assert "reach max_seq_length" not in caplog.text
    assert result.loss.warn_on_full_length is False
