"""DupMAELoss: the bag-of-words term against a per-row reference, the decoder query, training, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from retromae_st import DupMAELoss, RetroMAELoss
from retromae_st.bow_max_pool import bow_max_pool
from retromae_st.dupmae_loss import (
    bag_of_words_loss,
    bag_of_words_target,
    bag_of_words_tokens,
    ordinary_token_mask,
)
from tests.conftest import average_loss_terms, train_on


def features_of(model, texts):
    return model.preprocess(texts)


def ot_vector_of(logits, ordinary):
    """The package's OT vector (``bow_max_pool``) of given ``(B, L, V)`` logits: an identity projection."""
    vocab_size = logits.size(-1)
    return bow_max_pool(logits[ordinary], torch.eye(vocab_size), None, ordinary, chunk_size=5)[0]


def reference_bow_loss(logits, input_ids, attention_mask, special_ids, vocab_size, token_rules="authors"):
    """The authors' DupMAE BoW loss, one row at a time (``modeling_duplex.py`` + ``DupMAECollator``).

    ``"authors"``: their rule: ``ot_embedding`` max-pools ``logits[:, 1:]`` with padding pushed down by -1000
    (every real position after ``[CLS]``, ``[SEP]`` included); the target assigns ``1 / n`` to each of the
    ``n`` ``token_ids`` (the row without its first and last token, specials inside the text included).
    ``"skip_special"``: special tokens excluded from both the pooling and the target."""
    losses = []
    for row in range(input_ids.size(0)):
        n = int(attention_mask[row].sum())
        if token_rules == "authors":
            mask = (1 - attention_mask[row, 1:, None].float()) * -1000
            ot = (logits[row, 1:] + mask).max(dim=0).values
            tokens = input_ids[row, 1 : n - 1].tolist()
        else:
            positions = [i for i in range(1, n) if int(input_ids[row, i]) not in special_ids]
            tokens = [int(input_ids[row, i]) for i in positions]
            if not positions:
                losses.append(torch.tensor(0.0))
                continue
            ot = logits[row, positions].max(dim=0).values
        weight = torch.zeros(vocab_size)
        for token in tokens:
            weight[token] = 1 / len(tokens)  # assigned, not accumulated, as in the collator
        losses.append(-(weight * F.log_softmax(ot, dim=-1)).sum())
    return torch.stack(losses).mean()


@pytest.mark.parametrize("token_rules", ["authors", "skip_special"])
def test_bow_loss_equals_per_row_reference_on_random_inputs(token_rules):
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
        input_ids[0, 3] = 2  # a special token inside a row (ignored by "skip_special", counted by "authors")
        logits = torch.randn(batch, length, vocab_size, generator=generator)

        input_ids[1, 2] = 1  # and a [CLS] id inside a row (a word under the authors' rule)
        ordinary = ordinary_token_mask(input_ids, attention_mask, special, token_rules)
        counted = bag_of_words_tokens(input_ids, attention_mask, special, token_rules)
        rows = ordinary.nonzero(as_tuple=True)[0]
        ot = ot_vector_of(logits, ordinary)
        assert rows.numel() > 0
        ours = bag_of_words_loss(ot, bag_of_words_target(input_ids, counted, vocab_size))
        reference = reference_bow_loss(
            logits, input_ids, attention_mask, special_ids, vocab_size, token_rules
        )
        torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


def test_bow_target_counts_repeated_tokens_once_and_ignores_special_and_padding():
    special = torch.zeros(20, dtype=torch.bool)
    special[[0, 1, 2, 3]] = True  # 0 [PAD], 1 [CLS], 2 [SEP], 3 [UNK]
    input_ids = torch.tensor([[1, 5, 5, 7, 2, 0], [1, 9, 2, 0, 0, 0], [1, 3, 8, 3, 2, 0]])
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]])
    expected = torch.zeros(3, 20)
    expected[0, 5] = expected[0, 7] = 1 / 3  # 3 content tokens, "5" twice: assigned once
    expected[1, 9] = 1.0
    old = expected.clone()
    old[2, 8] = 1.0  # "skip_special": [UNK] is not counted
    expected[2, 3] = expected[2, 8] = 1 / 3  # "authors": [UNK] is a content token (twice: assigned once)
    for token_rules, target in (("authors", expected), ("skip_special", old)):
        counted = bag_of_words_tokens(input_ids, attention_mask, special, token_rules)
        torch.testing.assert_close(bag_of_words_target(input_ids, counted, 20), target, msg=token_rules)


@pytest.mark.parametrize(("token_rules", "expected"), [("authors", 7.0), ("skip_special", 1.0)])
def test_ot_vector_pools_sep_only_under_the_authors_rule(token_rules, expected):
    special = torch.zeros(8, dtype=torch.bool)
    special[[0, 1, 2]] = True
    input_ids = torch.tensor([[1, 4, 2, 0]])
    attention_mask = torch.tensor([[1, 1, 1, 0]])
    ordinary = ordinary_token_mask(input_ids, attention_mask, special, token_rules)
    assert ordinary.tolist() == [[False, True, token_rules == "authors", False]]
    logits = torch.zeros(1, 4, 8)
    logits[0, 1] = 1.0
    logits[0, 2] = 7.0  # [SEP]: pooled by the authors
    logits[0, [0, 3]] = 100.0  # [CLS], padding: never reach the max
    ot = ot_vector_of(logits, ordinary)
    torch.testing.assert_close(ot, torch.full((1, 8), expected))


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


@pytest.mark.parametrize(
    ("token_rules", "texts"), [("authors", ["", "  "]), ("skip_special", ["🙂", "🎉 🙂"])]
)
def test_batch_with_nothing_to_reconstruct_is_a_zero_gradient_step(tiny_model, caplog, token_rules, texts):
    loss = DupMAELoss(tiny_model, token_rules=token_rules)
    with caplog.at_level("WARNING"):
        terms = loss([features_of(tiny_model, texts)])
    assert set(terms) == {"encoder_mlm", "decoder_mlm", "bow"}
    assert all(value.item() == 0.0 for value in terms.values())
    sum(terms.values()).backward()
    grads = [p.grad for p in loss.parameters() if p.requires_grad]
    assert grads and all(grad is not None and not grad.any() for grad in grads)
    assert loss.skipped_batches == 1 and "nothing to reconstruct" in caplog.text


def test_unk_only_batch_is_trained_under_the_authors_rule(tiny_model):
    """Under the authors' rule [UNK] is predicted by the decoder and counted by the BoW target."""
    loss = DupMAELoss(tiny_model)
    terms = loss([features_of(tiny_model, ["🙂", "🎉 🙂"])])
    assert terms["decoder_mlm"] > 0 and terms["bow"] > 0
    assert terms["encoder_mlm"].item() == 0.0  # every chosen word is an [UNK]: unmasked, no label
    assert loss.skipped_batches == 0


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
