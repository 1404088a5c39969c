"""DupMAELoss: the bag-of-words term against a per-row reference, the decoder query, training, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from retromae_st import DupMAELoss, RetroMAELoss
from retromae_st.bow_max_pool import bow_max_pool
from retromae_st.dupmae_loss import bag_of_words_loss, bag_of_words_target, ordinary_token_mask
from tests.conftest import average_loss_terms, train_on


def features_of(model, texts):
    return model.preprocess(texts)


def ot_vector_of(logits, ordinary):
    """The package's OT vector (``bow_max_pool``) of given ``(B, L, V)`` logits: an identity projection."""
    vocab_size = logits.size(-1)
    return bow_max_pool(logits[ordinary], torch.eye(vocab_size), None, ordinary, chunk_size=5)[0]


def reference_bow_loss(logits, input_ids, attention_mask, special_ids, vocab_size):
    """The authors' DupMAE BoW loss, one row at a time (``modeling_duplex.py`` + ``DupMAECollator``),
    with our ordinary-token rule (special tokens excluded from both the pooling and the target)."""
    losses = []
    for row in range(input_ids.size(0)):
        positions = [
            i
            for i in range(1, input_ids.size(1))
            if attention_mask[row, i] and int(input_ids[row, i]) not in special_ids
        ]
        tokens = [int(input_ids[row, i]) for i in positions]
        weight = torch.zeros(vocab_size)
        for token in tokens:
            weight[token] = 1 / len(tokens)  # assigned, not accumulated, as in the collator
        if not positions:
            losses.append(torch.tensor(0.0))
            continue
        ot = logits[row, positions].max(dim=0).values
        losses.append(-(weight * F.log_softmax(ot, dim=-1)).sum())
    return torch.stack(losses).mean()


def test_bow_loss_equals_per_row_reference_on_random_inputs():
    generator = torch.Generator().manual_seed(0)
    vocab_size, special_ids = 50, {0, 1, 2}
    special = torch.zeros(vocab_size, dtype=torch.bool)
    special[list(special_ids)] = True
    for _ in range(5):
        batch, length = 6, 12
        input_ids = torch.randint(3, 12, (batch, length), generator=generator)  # small range: many repeats
        input_ids[:, 0] = 1  # [CLS]
        lengths = torch.randint(1, length + 1, (batch,), generator=generator)
        attention_mask = (torch.arange(length)[None] < lengths[:, None]).long()
        input_ids[torch.arange(batch), lengths - 1] = 2  # [SEP] at the end of each row
        input_ids[attention_mask == 0] = 0  # padding
        input_ids[0, 3] = 2  # a special token inside a row is ignored too
        logits = torch.randn(batch, length, vocab_size, generator=generator)

        ordinary = ordinary_token_mask(input_ids, attention_mask, special)
        rows = ordinary.nonzero(as_tuple=True)[0]
        ot = ot_vector_of(logits, ordinary)
        assert rows.numel() > 0
        ours = bag_of_words_loss(ot, bag_of_words_target(input_ids, ordinary, vocab_size))
        reference = reference_bow_loss(logits, input_ids, attention_mask, special_ids, vocab_size)
        torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


def test_bow_target_counts_repeated_tokens_once_and_ignores_special_and_padding():
    special = torch.zeros(20, dtype=torch.bool)
    special[[0, 1, 2]] = True
    input_ids = torch.tensor([[1, 5, 5, 7, 2, 0], [1, 9, 2, 0, 0, 0]])
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]])
    ordinary = ordinary_token_mask(input_ids, attention_mask, special)
    target = bag_of_words_target(input_ids, ordinary, 20)
    expected = torch.zeros(2, 20)
    expected[0, 5] = expected[0, 7] = 1 / 3  # 3 content tokens, "5" twice: assigned once
    expected[1, 9] = 1.0
    torch.testing.assert_close(target, expected)


def test_ot_vector_ignores_padding_and_special_positions():
    special = torch.zeros(8, dtype=torch.bool)
    special[[0, 1, 2]] = True
    input_ids = torch.tensor([[1, 4, 2, 0]])
    attention_mask = torch.tensor([[1, 1, 1, 0]])
    ordinary = ordinary_token_mask(input_ids, attention_mask, special)
    logits = torch.zeros(1, 4, 8)
    logits[0, 1] = 1.0
    logits[0, [0, 2, 3]] = 100.0  # [CLS], [SEP], padding: must not reach the max
    ot = ot_vector_of(logits, ordinary)
    torch.testing.assert_close(ot, torch.ones(1, 8))


def test_loss_returns_three_named_finite_terms_with_weighted_bow(tiny_model, sample_texts):
    loss = DupMAELoss(tiny_model)
    features = features_of(tiny_model, sample_texts[:8])
    generator = loss.mask_generator(features["input_ids"].device)
    state = generator.get_state()
    torch.manual_seed(0)  # dropout
    terms = loss([features])
    assert set(terms) == {"encoder_mlm", "decoder_mlm", "bow"}
    assert all(value.ndim == 0 and torch.isfinite(value) for value in terms.values())
    loss.bow_loss_weight = 1.0
    generator.set_state(state)
    torch.manual_seed(0)
    unweighted = loss([features])["bow"]
    torch.testing.assert_close(terms["bow"], 0.1 * unweighted)


def test_encoder_mlm_term_equals_retromae_loss_under_the_same_masks(tiny_model, sample_texts):
    dupmae, retromae = DupMAELoss(tiny_model).eval(), RetroMAELoss(tiny_model).eval()
    retromae.mlm_head.load_state_dict(dupmae.mlm_head.state_dict())
    features = features_of(tiny_model, sample_texts[:6])
    masks = dupmae.make_masks(features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = dupmae.compute_loss_terms(features, masks)["encoder_mlm"]
        theirs = retromae.compute_loss_terms(features, masks)["encoder_mlm"]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_decoder_query_goes_through_the_embeddings_layer_norm(tiny_model, sample_texts):
    loss = DupMAELoss(tiny_model).eval()
    input_ids = features_of(tiny_model, sample_texts[:2])["input_ids"]
    cls = torch.randn(2, 64)
    query, key_value = loss.decoder_inputs(cls, input_ids)
    embeddings = tiny_model[0].auto_model.embeddings
    length = input_ids.size(1)
    by_hand = embeddings.LayerNorm(
        cls[:, None]
        + embeddings.position_embeddings.weight[:length][None]
        + embeddings.token_type_embeddings.weight[0]
    )
    torch.testing.assert_close(query, by_hand)
    assert torch.equal(key_value[:, 0], cls)


def test_training_steps_lower_all_three_terms(tiny_model, sample_texts):
    torch.manual_seed(0)
    loss = DupMAELoss(tiny_model)
    batches = [features_of(tiny_model, sample_texts[i : i + 8]) for i in range(0, 8 * 25, 8)]
    before = average_loss_terms(loss, batches[:4])
    train_on(loss, batches, lr=2e-3)
    after = average_loss_terms(loss, batches[:4])
    assert after["encoder_mlm"] < before["encoder_mlm"] - 0.5
    assert after["decoder_mlm"] < before["decoder_mlm"] - 0.5
    assert after["bow"] < before["bow"] - 0.1, (before, after)


def test_bow_gradient_reaches_encoder_and_head(tiny_model, sample_texts):
    loss = DupMAELoss(tiny_model)
    loss([features_of(tiny_model, sample_texts[:4])])["bow"].backward()
    encoder = tiny_model[0].auto_model.encoder.layer[-1].output.dense.weight
    head = loss.mlm_head.predictions.transform.dense.weight
    assert encoder.grad is not None and encoder.grad.abs().sum() > 0
    assert head.grad is not None and head.grad.abs().sum() > 0


def test_empty_and_one_word_texts_give_finite_losses(tiny_model):
    loss = DupMAELoss(tiny_model)
    terms = loss([features_of(tiny_model, ["", "   ", "word", "a", "two words", "\t\n"])])
    assert all(torch.isfinite(value) for value in terms.values())


def test_batch_with_nothing_to_reconstruct_raises(tiny_model):
    with pytest.raises(ValueError, match="empty"):
        DupMAELoss(tiny_model)([features_of(tiny_model, ["", "  "])])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"bow_loss_weight": -0.1}, ValueError, "bow_loss_weight"),
        ({"bow_loss_weight": float("nan")}, ValueError, "bow_loss_weight"),
        ({"bow_loss_weight": float("inf")}, ValueError, "bow_loss_weight"),
        ({"bow_loss_weight": "0.1"}, TypeError, "bow_loss_weight"),
        ({"encoder_mask_ratio": 1.0}, ValueError, "encoder_mask_ratio"),
        ({"decoder_pool_size": 0}, ValueError, "decoder_pool_size"),
    ],
)
def test_bad_arguments_are_named(tiny_model, kwargs, error, match):
    with pytest.raises(error, match=match):
        DupMAELoss(tiny_model, **kwargs)


def test_config_and_citation(tiny_model):
    loss = DupMAELoss(tiny_model, bow_loss_weight=0.2)
    assert loss.get_config_dict()["bow_loss_weight"] == 0.2
    assert "2305.02564" in loss.citation
