"""Speed must not change the math: RetroMAELoss equals the straightforward baseline on the same masks.

The baseline (``benchmarks/reference_retromae.py``) is the authors' way of computing the same thing:
logits at every position over the whole vocabulary, a BertLayer-style decoder with an additive float
mask. It shares every weight with the loss under test, so losses and gradients must agree.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.reference_retromae import (
    ReferenceRetroMAECollator,
    ReferenceRetroMAEModel,
    reference_batch_from_masks,
)
from retromae_st import RetroMAELoss
from retromae_st.masking import RetroMAEMasks

ATOL = 1e-5


def gradients(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: parameter.grad.detach().clone()
        for name, parameter in module.named_parameters()
        if parameter.grad is not None
    }


def loss_and_gradients(module: torch.nn.Module, compute) -> tuple[dict[str, torch.Tensor], dict]:
    module.zero_grad(set_to_none=True)
    terms = compute()
    sum(terms.values()).backward()
    return {name: value.detach() for name, value in terms.items()}, gradients(module)


def assert_same(ours, reference) -> None:
    (our_terms, our_grads), (ref_terms, ref_grads) = ours, reference
    assert our_terms.keys() == ref_terms.keys()
    for name in our_terms:
        torch.testing.assert_close(our_terms[name], ref_terms[name], atol=ATOL, rtol=0, msg=name)
    assert our_grads.keys() == ref_grads.keys()
    for name in our_grads:
        torch.testing.assert_close(our_grads[name], ref_grads[name], atol=ATOL, rtol=1e-4, msg=name)


@pytest.fixture()
def loss_and_batch(tiny_model, sample_texts):
    loss = RetroMAELoss(tiny_model)
    loss.eval()  # no dropout: both sides must see the same network
    features = tiny_model.preprocess(sample_texts[:8])  # padded, rows of different lengths
    assert (features["attention_mask"] == 0).any()
    return loss, features


def test_same_loss_and_gradients_on_our_masks(loss_and_batch):
    loss, features = loss_and_batch
    masks = loss.make_masks(features, generator=torch.Generator().manual_seed(0))
    reference = ReferenceRetroMAEModel(loss)
    ours = loss_and_gradients(loss, lambda: loss.compute_loss_terms(features, masks))
    theirs = loss_and_gradients(loss, lambda: reference(reference_batch_from_masks(features, masks)))
    assert len(ours[1]) > 10  # encoder, decoder and head all received gradients
    assert_same(ours, theirs)


@pytest.mark.parametrize("with_unk", [False, True])
def test_same_loss_and_gradients_on_the_authors_collator_masks(tiny_model, sample_texts, tokenizer, with_unk):
    """On the reference collator's masks, also for rows with [UNK] (predicted by the authors' decoder); and our
    own decoder labels are the collator's, [UNK] included."""
    loss = RetroMAELoss(tiny_model).eval()
    texts = sample_texts[:6] + (
        ["🙂 the cat 🎉 sat on 🙂 the mat", "🙂🙂 🎉"] if with_unk else sample_texts[6:8]
    )
    features = tiny_model.preprocess(texts)
    assert bool((features["input_ids"] == tokenizer.unk_token_id).any()) == with_unk
    ids = [
        row[mask.bool()].tolist()
        for row, mask in zip(features["input_ids"], features["attention_mask"], strict=True)
    ]
    torch.manual_seed(1)
    batch = ReferenceRetroMAECollator(tokenizer)(ids)
    attention = batch["encoder_attention_mask"].bool()
    visible = batch["decoder_attention_mask"].bool()
    visible[:, :, 0] |= ~attention  # padded rows (no labels): our SDPA needs one visible key per row
    masks = RetroMAEMasks(
        batch["encoder_input_ids"], batch["encoder_labels"], batch["decoder_labels"], visible
    )
    reference = ReferenceRetroMAEModel(loss)
    ours = loss_and_gradients(loss, lambda: loss.compute_loss_terms(features, masks))
    theirs = loss_and_gradients(loss, lambda: reference(batch))
    assert_same(ours, theirs)
    own = loss.make_masks(features, generator=torch.Generator().manual_seed(0))
    assert torch.equal(own.decoder_labels, batch["decoder_labels"])


def test_comparison_notices_a_different_decoder_mask(loss_and_batch):
    loss, features = loss_and_batch
    masks = loss.make_masks(features, generator=torch.Generator().manual_seed(0))
    changed = RetroMAEMasks(
        masks.encoder_input_ids, masks.encoder_labels, masks.decoder_labels, masks.decoder_visible.clone()
    )
    changed.decoder_visible[0, 3, 1:] = (
        ~changed.decoder_visible[0, 3, 1:] & features["attention_mask"][0, 1:].bool()
    )
    reference = ReferenceRetroMAEModel(loss)
    ours = loss_and_gradients(loss, lambda: loss.compute_loss_terms(features, changed))
    theirs = loss_and_gradients(loss, lambda: reference(reference_batch_from_masks(features, masks)))
    with pytest.raises(AssertionError):
        assert_same(ours, theirs)


def test_same_loss_in_training_mode_without_dropout(tiny_model, sample_texts):
    """The fast paths of training mode (SDPA dropout branch, autograd through labelled rows) agree too."""
    loss = RetroMAELoss(tiny_model)
    for module in loss.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    loss.decoder.attention_probs_dropout_prob = 0.0
    loss.train()
    features = tiny_model.preprocess(sample_texts[8:16])
    masks = loss.make_masks(features, generator=torch.Generator().manual_seed(2))
    reference = ReferenceRetroMAEModel(loss)
    ours = loss_and_gradients(loss, lambda: loss.compute_loss_terms(features, masks))
    theirs = loss_and_gradients(loss, lambda: reference(reference_batch_from_masks(features, masks)))
    assert_same(ours, theirs)


def linear_problem(seed: int, with_bias: bool):
    """11 rows of 8 features, a 50-class linear layer (with or without bias) and targets, all seeded."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(11, 8, generator=generator, requires_grad=True)
    weight = torch.randn(50, 8, generator=generator, requires_grad=True)
    bias = torch.randn(50, generator=generator, requires_grad=True) if with_bias else None
    targets = torch.randint(50, (11,), generator=generator)
    return x, weight, bias, targets


def assert_fused_cross_entropy_matches_autograd(x, weight, bias, targets, **options) -> None:
    """Loss and gradients of ``linear_cross_entropy`` (chunks of 4 rows, and unchunked without grad)
    equal ``F.cross_entropy(F.linear(...))`` (which ignores ``-100`` targets)."""
    from retromae_st.fused_cross_entropy import linear_cross_entropy

    leaves = [leaf for leaf in (x, weight, bias) if leaf is not None]
    expected = torch.nn.functional.cross_entropy(torch.nn.functional.linear(x, weight, bias), targets)
    expected_grads = torch.autograd.grad(expected * 3.0, leaves)
    fused = linear_cross_entropy(x, weight, bias, targets, chunk_rows=4, **options)
    fused_grads = torch.autograd.grad(fused * 3.0, leaves)
    torch.testing.assert_close(fused, expected, atol=ATOL, rtol=0)
    for ours, theirs in zip(fused_grads, expected_grads, strict=True):
        torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(
            linear_cross_entropy(x, weight, bias, targets, **options), expected, atol=ATOL, rtol=0
        )


@pytest.mark.parametrize("with_bias", [True, False])
def test_fused_linear_cross_entropy_matches_autograd(with_bias):
    x, weight, bias, targets = linear_problem(seed=0, with_bias=with_bias)
    assert_fused_cross_entropy_matches_autograd(x, weight, bias, targets)  # 3 chunks, the last one short


def test_fused_linear_cross_entropy_under_bf16_autocast():
    from retromae_st.fused_cross_entropy import linear_cross_entropy

    generator = torch.Generator().manual_seed(1)
    x = torch.randn(9, 16, generator=generator, requires_grad=True)
    weight = torch.randn(40, 16, generator=generator, requires_grad=True)
    targets = torch.randint(40, (9,), generator=generator)
    expected = torch.nn.functional.cross_entropy(torch.nn.functional.linear(x, weight), targets)
    expected_grads = torch.autograd.grad(expected, [x, weight])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = linear_cross_entropy(x, weight, None, targets, chunk_rows=4)
    fused_grads = torch.autograd.grad(fused, [x, weight])
    assert fused.dtype == torch.float32 and torch.isfinite(fused)
    torch.testing.assert_close(fused, expected, atol=0.1, rtol=0.02)
    for ours, theirs in zip(fused_grads, expected_grads, strict=True):
        assert ours.dtype == torch.float32
        torch.testing.assert_close(ours, theirs, atol=0.02, rtol=0.05)


@pytest.mark.parametrize("with_bias", [True, False])
def test_fused_linear_cross_entropy_with_ignored_rows_matches_autograd(with_bias):
    """``ignore=True`` (no host synchronisation) equals ``F.cross_entropy(..., ignore_index=-100)``."""
    from retromae_st.fused_cross_entropy import linear_cross_entropy

    x, weight, bias, targets = linear_problem(seed=3, with_bias=with_bias)
    targets[[0, 4, 5, 10]] = -100
    assert_fused_cross_entropy_matches_autograd(x, weight, bias, targets, ignore=True)

    leaves = [x, weight] + ([bias] if with_bias else [])
    nothing = torch.full_like(targets, -100)  # no label at all: 0 and zero gradients, not NaN
    empty = linear_cross_entropy(x, weight, bias, nothing, chunk_rows=4, ignore=True)
    assert empty.item() == 0.0
    assert all(not grad.any() for grad in torch.autograd.grad(empty, leaves))


@pytest.mark.parametrize("labels_name", ["encoder_labels", "decoder_labels"])
def test_heads_at_all_positions_equal_heads_at_labelled_positions(loss_and_batch, labels_name):
    """The synchronisation-free head path (every position, unlabelled ones left out of the mean on the
    device) gives the same loss and gradients as the labelled-positions path."""
    from retromae_st.mlm_head import masked_lm_loss

    loss, features = loss_and_batch
    masks = loss.make_masks(features, generator=torch.Generator().manual_seed(4))
    labels = getattr(masks, labels_name)
    hidden = torch.randn(*labels.shape, loss.mlm_head.predictions.transform.dense.in_features)
    hidden.requires_grad_()

    def compute(all_positions: bool):
        return lambda: {"mlm": masked_lm_loss(loss.mlm_head, hidden, labels, all_positions=all_positions)}

    gathered = loss_and_gradients(loss, compute(False))
    gathered_input = hidden.grad
    hidden.grad = None
    everywhere = loss_and_gradients(loss, compute(True))
    assert_same(everywhere, gathered)
    torch.testing.assert_close(hidden.grad, gathered_input, atol=ATOL, rtol=1e-4)
