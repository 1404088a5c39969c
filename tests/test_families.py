"""BERT, RoBERTa, XLM-RoBERTa, ModernBERT (and DeBERTa-v2 in its legacy BERT-head layout) encoders: their own
MLM heads, training, exports with the decoder."""

from __future__ import annotations

import logging

import pytest
import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModelForMaskedLM

from retromae_st import DupMAELoss, RetroMAELoss, load_cls_model, save_as_masked_lm
from retromae_st.checkpointing import LOSS_STATE_DIR
from retromae_st.decoder import DECODER_CONFIG, DECODER_WEIGHTS
from retromae_st.mlm_head import HEAD_LAYOUTS, MaskedLMHead, projection_parts
from tests.conftest import average_loss_terms, train_on
from tests.families_helpers import FAMILIES, build_family_checkpoint, corpus_lines
from tests.test_training import logged_terms, make_trainer

TEXTS = corpus_lines(64)[:64]


@pytest.fixture(scope="module", params=FAMILIES)
def family_dir(request, tmp_path_factory):
    family = request.param
    return build_family_checkpoint(family, tmp_path_factory.mktemp(family.replace("-", "_")) / "mlm")


def load(path) -> SentenceTransformer:
    torch.manual_seed(0)
    return load_cls_model(str(path), max_seq_length=48)


def batches_of(model, count: int = 4, size: int = 8) -> list[dict[str, torch.Tensor]]:
    return [dict(model.tokenize(TEXTS[i * size : (i + 1) * size])) for i in range(count)]


def head_logits(model: SentenceTransformer, head, features) -> torch.Tensor:
    with torch.no_grad():
        return head(model(dict(features))["token_embeddings"])


def test_loss_uses_the_checkpoints_own_head(family_dir, caplog):
    model = load(family_dir)
    with caplog.at_level(logging.INFO, logger="retromae_st"):
        loss = RetroMAELoss(model)
    assert "Loaded the pretrained MLM head" in caplog.text
    reference = AutoModelForMaskedLM.from_pretrained(family_dir).eval()
    features = model.tokenize(TEXTS[:4])
    with torch.no_grad():
        expected = reference(
            input_ids=features["input_ids"], attention_mask=features["attention_mask"]
        ).logits
    assert torch.allclose(head_logits(model, loss.mlm_head, features), expected, atol=1e-5)
    # The projection is the word embedding tensor itself (tied, as in the checkpoint), not a copy.
    _, weight, bias = projection_parts(loss.mlm_head)
    assert weight is model[0].auto_model.get_input_embeddings().weight
    reference_bias = reference.get_output_embeddings().bias
    assert torch.equal(bias, reference_bias) and bool(reference_bias.abs().sum() > 0)
    if reference.config.model_type in HEAD_LAYOUTS:
        assert isinstance(loss.mlm_head, MaskedLMHead)
        assert "mlm_head.decoder.weight" not in loss.training_state_dict()


def test_checkpoint_without_head_gets_a_new_tied_head(family_dir, tmp_path, caplog):
    family = AutoModelForMaskedLM.from_pretrained(family_dir).config.model_type
    plain = build_family_checkpoint(family, tmp_path / "plain", with_mlm_head=False)
    model = load(plain)
    with caplog.at_level(logging.INFO, logger="retromae_st"):
        loss = RetroMAELoss(model)
    assert "No pretrained MLM head" in caplog.text
    _, weight, bias = projection_parts(loss.mlm_head)
    assert weight is model[0].auto_model.get_input_embeddings().weight
    assert bias is None or not bool(bias.any())


@pytest.mark.parametrize("loss_class", [RetroMAELoss, DupMAELoss])
def test_twenty_steps_lower_every_term(family_dir, loss_class):
    model = load(family_dir)
    loss = loss_class(model, decoder_pool_size=16)
    batches = batches_of(model)
    before = average_loss_terms(loss, batches)
    torch.manual_seed(0)
    train_on(loss, batches * 5, lr=1e-3)
    after = average_loss_terms(loss, batches)
    expected_terms = {"encoder_mlm", "decoder_mlm"} | ({"bow"} if loss_class is DupMAELoss else set())
    assert set(before) == expected_terms
    for term in expected_terms:
        assert after[term] < before[term] - 0.05, (term, before[term], after[term])


def trained_loss(path, loss_class=RetroMAELoss, steps: int = 3):
    model = load(path)
    loss = loss_class(model, decoder_pool_size=16)
    torch.manual_seed(0)
    train_on(loss, batches_of(model, count=steps), lr=1e-3)
    return model, loss.eval()


def test_export_reloads_as_masked_lm_with_identical_logits_and_keeps_the_decoder(
    family_dir, tmp_path, caplog
):
    model, loss = trained_loss(family_dir)
    export = tmp_path / "masked_lm"
    save_as_masked_lm(model, loss, str(export))
    assert (export / DECODER_WEIGHTS).is_file() and (export / DECODER_CONFIG).is_file()

    reloaded = AutoModelForMaskedLM.from_pretrained(export).eval()
    assert type(reloaded).__name__ == type(AutoModelForMaskedLM.from_pretrained(family_dir)).__name__
    features = model.tokenize(TEXTS[:4])
    with torch.no_grad():
        logits = reloaded(input_ids=features["input_ids"], attention_mask=features["attention_mask"]).logits
    assert torch.allclose(logits, head_logits(model.eval(), loss.mlm_head, features), atol=1e-5)

    with caplog.at_level(logging.INFO, logger="retromae_st"):
        again = RetroMAELoss(load_cls_model(str(export), max_seq_length=48))
    assert "Loaded the trained RetroMAE decoder" in caplog.text
    assert "Loaded the pretrained MLM head" in caplog.text
    trained, restored = loss.decoder.state_dict(), again.decoder.state_dict()
    assert trained.keys() == restored.keys()
    for key in trained:
        assert torch.equal(trained[key], restored[key]), key
    head, restored_head = loss.mlm_head.state_dict(), again.mlm_head.state_dict()
    assert head.keys() == restored_head.keys()
    for key in head:
        assert torch.equal(head[key], restored_head[key]), key


def test_saved_decoder_of_another_shape_is_refused_by_name(family_dir, tmp_path):
    model, loss = trained_loss(family_dir, steps=1)
    export = tmp_path / "masked_lm"
    save_as_masked_lm(model, loss, str(export))
    config_file = export / DECODER_CONFIG
    config_file.write_text(
        config_file.read_text().replace('"intermediate_size": 128', '"intermediate_size": 96')
    )
    with pytest.raises(ValueError, match=r"retromae_decoder_config\.json.*intermediate_size saved 96"):
        RetroMAELoss(load_cls_model(str(export)))


def test_saved_sentence_transformer_reloads_with_identical_embeddings(family_dir, tmp_path):
    model, _ = trained_loss(family_dir, loss_class=DupMAELoss, steps=2)
    model.save(str(tmp_path / "st"))
    reloaded = SentenceTransformer(str(tmp_path / "st"))
    expected = model.encode(TEXTS[:6], convert_to_tensor=True)
    assert torch.equal(reloaded.encode(TEXTS[:6], convert_to_tensor=True), expected)


def test_dupmae_pooling_computes_the_losss_head_logits(family_dir):
    from retromae_st import build_dupmae_model

    model, loss = trained_loss(family_dir, loss_class=DupMAELoss, steps=1)
    pooling = build_dupmae_model(loss, top_k=8)[1]
    hidden = torch.randn(5, model.get_embedding_dimension())
    with torch.no_grad():
        assert torch.allclose(pooling.mlm_head(hidden), loss.mlm_head(hidden), atol=1e-5)


@pytest.mark.parametrize("family", ["modernbert"])
def test_resume_mid_run_restores_the_decoder_of_a_non_bert_family(family, tmp_path):
    path = build_family_checkpoint(family, tmp_path / "mlm")
    texts = TEXTS[:48]
    full, _, full_loss = make_trainer(path, texts, tmp_path / "full", max_steps=6)
    full.train()
    first, _, _ = make_trainer(path, texts, tmp_path / "parts", max_steps=6, save_steps=3)
    first.train()
    checkpoint = tmp_path / "parts" / "checkpoint-3"
    assert (checkpoint / LOSS_STATE_DIR / "loss.safetensors").is_file()
    resumed, _, resumed_loss = make_trainer(path, texts, tmp_path / "parts", max_steps=6, save_steps=3)
    assert resumed_loss.decoder.position_embeddings is not None  # ModernBERT: the decoder owns its positions
    assert not torch.equal(resumed_loss.decoder.query.weight, full_loss.decoder.query.weight)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    expected = {step: terms for step, *terms in logged_terms(full)}
    got = {step: terms for step, *terms in logged_terms(resumed) if step > 3}
    assert sorted(got) == [4, 5, 6]
    for step in got:
        assert got[step] == pytest.approx(expected[step], abs=1e-4), step
    for key, tensor in full_loss.training_state_dict().items():
        assert torch.allclose(resumed_loss.training_state_dict()[key], tensor, atol=1e-5), key


@pytest.mark.slow  # ~50 s on the shared 2-core machine: two torchrun ranks
@pytest.mark.parametrize("family", ["modernbert"])
def test_two_rank_gloo_step_equals_one_process_for_a_non_bert_family(family, tmp_path):
    from tests.test_reliability_distributed import run_ddp_equivalence

    path = build_family_checkpoint(family, tmp_path / "mlm")
    result = run_ddp_equivalence("retromae", path, tmp_path / "result.json")
    assert result["ddp_loss"] == pytest.approx(result["single_loss"], abs=1e-5)
    assert result["grad_names_equal"]
    assert result["max_grad_diff"] < 1e-5
    assert result["max_unsynced_decoder_grad_diff"] > 1e-4


def test_stage2_loss_starts_from_the_exported_decoder_and_trains_every_part(family_dir, tmp_path):
    from retromae_st.retromae_contrastive_loss import RetroMAEContrastiveLoss

    model, loss = trained_loss(family_dir, steps=1)
    save_as_masked_lm(model, loss, str(tmp_path / "masked_lm"))
    stage2_model = load(tmp_path / "masked_lm")
    stage2 = RetroMAEContrastiveLoss(stage2_model, mae_loss="retromae")
    assert torch.equal(stage2.mae_loss.decoder.query.weight, loss.decoder.query.weight)
    columns = [
        stage2_model.tokenize(TEXTS[0:4]),
        stage2_model.tokenize([t[: len(t) // 2] for t in TEXTS[0:4]]),
    ]
    terms = stage2(columns)
    assert set(terms) == {"contrastive", "encoder_mlm", "decoder_mlm"}
    sum(terms.values()).backward()
    _, _, bias = projection_parts(stage2.mae_loss.mlm_head)
    for name, parameter in {
        "encoder word embeddings": stage2_model[0].auto_model.get_input_embeddings().weight,
        "decoder": stage2.mae_loss.decoder.query.weight,
        "MLM head bias": bias,
    }.items():
        assert parameter.grad is not None and bool(parameter.grad.abs().sum() > 0), name


def test_head_at_every_position_equals_head_at_labelled_positions(family_dir):
    """The accelerator path of the decoder loss (head at every position, ignored ones left out of the mean)
    gives the labelled-positions value for every family's head."""
    from retromae_st.mlm_head import masked_lm_loss

    model = load(family_dir)
    loss = RetroMAELoss(model)
    hidden = torch.randn(3, 7, model.get_embedding_dimension(), requires_grad=True)
    labels = torch.randint(0, loss.vocab_size, (3, 7))
    labels[:, ::2] = -100
    selected = masked_lm_loss(loss.mlm_head, hidden, labels)
    everywhere = masked_lm_loss(loss.mlm_head, hidden, labels, all_positions=True)
    assert torch.allclose(selected, everywhere, atol=1e-6)
    expected = torch.nn.functional.cross_entropy(loss.mlm_head(hidden).flatten(0, 1), labels.flatten())
    assert torch.allclose(selected, expected, atol=1e-5)
