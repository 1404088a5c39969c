"""The chunked BoW max-pool (``retromae_st.bow_max_pool``) against the logits kept for autograd
(``benchmarks/reference_dupmae.py``, DupMAELoss before issue #20): loss, every gradient, ties, memory."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from benchmarks.reference_dupmae import (
    encoder_mlm_from_logits,
    ot_vector_from_logits,
    reference_dupmae_terms,
)
from retromae_st import DupMAELoss
from retromae_st.bow_max_pool import bow_max_pool

RTOL = 1e-5  # relative to each tensor's norm


def assert_relatively_close(
    ours: torch.Tensor, theirs: torch.Tensor, rtol: float = RTOL, floor: float = 1e-12
) -> None:
    """``|ours - theirs| <= rtol * max(|theirs|, floor)`` (Frobenius norms): relative, except for tensors
    that are zero up to rounding, whose scale is ``floor``."""
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    error = (ours.double() - theirs.double()).norm().item()
    assert error <= rtol * max(theirs.double().norm().item(), floor), (error, theirs.norm().item())


def pooled_mask(generator: torch.Generator, counts: list[int], length: int) -> torch.Tensor:
    """``(B, length)`` mask with ``counts[b]`` pooled positions in row ``b``, scattered (as with padding
    and special tokens in between)."""
    pooled = torch.zeros(len(counts), length, dtype=torch.bool)
    for row, count in enumerate(counts):
        pooled[row, torch.randperm(length, generator=generator)[:count]] = True
    return pooled


def problem(seed: int, counts: list[int], hidden: int = 8, vocab: int = 40, integer: bool = False):
    """Inputs of the vocabulary projection at the pooled positions, a labelled half, and the upstream
    gradient of the OT vector. ``integer``: small integer values, whose products and sums are exact in
    float32 whatever the order, so equal logits (ties) are equal in every kernel."""
    generator = torch.Generator().manual_seed(seed)
    pooled = pooled_mask(generator, counts, length=max(counts) + 3)
    n = sum(counts)
    if integer:
        x = torch.randint(-2, 3, (n, hidden), generator=generator).float()
        weight = torch.randint(-1, 2, (vocab, hidden), generator=generator).float()
        bias = torch.randint(-1, 2, (vocab,), generator=generator).float()
    else:
        x, weight = (
            torch.randn(n, hidden, generator=generator),
            torch.randn(vocab, hidden, generator=generator),
        )
        bias = torch.randn(vocab, generator=generator)
    labels = torch.randint(vocab, (n,), generator=generator)
    labels[torch.rand(n, generator=generator) < 0.5] = -100
    upstream = torch.randn(len(counts), vocab, generator=generator)
    leaves = [tensor.requires_grad_() for tensor in (x, weight, bias)]
    return leaves, pooled, labels, upstream


def chunked(pooled, labels, chunk_size):
    return lambda x, weight, bias: bow_max_pool(x, weight, bias, pooled, labels, chunk_size=chunk_size)


def unfused(pooled, labels):
    def terms(x, weight, bias):
        logits = F.linear(x, weight, bias).float()
        mlm = encoder_mlm_from_logits(logits, labels) if labels is not None else logits.sum() * 0.0
        return ot_vector_from_logits(logits, pooled), mlm

    return terms


def values_and_gradients(terms, leaves, upstream, mlm_weight=3.0, autocast=False):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        ot_vector, mlm = terms(*leaves)
    total = (ot_vector * upstream).sum() + mlm_weight * mlm
    return ot_vector, mlm, torch.autograd.grad(total, leaves)


def assert_same_as_unfused(leaves, pooled, labels, upstream, chunk_size, autocast=False, grad_rtol=RTOL):
    ours = values_and_gradients(chunked(pooled, labels, chunk_size), leaves, upstream, autocast=autocast)
    theirs = values_and_gradients(unfused(pooled, labels), leaves, upstream, autocast=autocast)
    assert_relatively_close(ours[0], theirs[0])
    assert_relatively_close(ours[1], theirs[1])
    for name, mine, reference in zip(("x", "weight", "bias"), ours[2], theirs[2], strict=True):
        assert mine.dtype == reference.dtype == torch.float32, name
        assert_relatively_close(mine, reference, grad_rtol)


CHUNKS = [1, 7, None]  # None: all positions in one chunk


@pytest.mark.parametrize("chunk_size", CHUNKS)
@pytest.mark.parametrize("integer", [False, True], ids=["random", "ties"])
def test_loss_and_gradients_equal_the_unfused_path(chunk_size, integer):
    """Rows with 0 to 4 pooled positions and a long one; with integer inputs, many tied maxima."""
    counts = [0, 1, 2, 3, 4, 0, 11]
    leaves, pooled, labels, upstream = problem(0, counts, integer=integer)
    if integer:  # the case must really have ties: some entry held by several positions of a row
        logits = F.linear(*leaves).detach()
        ot = ot_vector_from_logits(logits, pooled)
        rows = pooled.nonzero(as_tuple=True)[0]
        assert ((logits == ot[rows]).float().sum(0) > pooled.sum(1).clamp(max=1).sum()).any()
    size = sum(counts) if chunk_size is None else chunk_size
    assert_same_as_unfused(leaves, pooled, labels, upstream, size)


@pytest.mark.parametrize("chunk_size", CHUNKS)
@pytest.mark.parametrize("integer", [False, True], ids=["random", "ties"])
def test_max_pool_under_bf16_autocast_equals_the_unfused_path(chunk_size, integer):
    """BoW term alone under bf16 autocast: the same bf16 logits, so the same ties, and the logits gradient
    rounded as autocast rounds it."""
    counts = [2, 0, 4, 9, 1]
    leaves, pooled, _, upstream = problem(1, counts, integer=integer)
    size = sum(counts) if chunk_size is None else chunk_size
    assert_same_as_unfused(leaves, pooled, None, upstream, size, autocast=True)


@pytest.mark.parametrize("chunk_size", [1, 7, 22])
def test_bf16_autocast_with_the_mlm_term(chunk_size):
    """Both terms under bf16 autocast: same values (<= 1e-5); gradients to bf16 precision only, because
    the unfused path rounds the *sum* of the two terms' logits gradients to bf16 once and the fused one
    rounds each term's (as ``fused_cross_entropy`` does for RetroMAE's heads)."""
    counts = [3, 0, 4, 11, 4]
    leaves, pooled, labels, upstream = problem(2, counts)
    assert_same_as_unfused(leaves, pooled, labels, upstream, chunk_size, autocast=True, grad_rtol=2**-7)


def test_max_at_the_last_position_of_the_last_chunk():
    """Positions 0..20 in one row, chunks of 7: the largest logit of every entry is at position 20."""
    hidden, vocab = 4, 10
    x = torch.linspace(0.1, 1.0, 21)[:, None].repeat(1, hidden).requires_grad_()
    weight = torch.rand(vocab, hidden, generator=torch.Generator().manual_seed(0)).add(0.1).requires_grad_()
    bias = torch.zeros(vocab, requires_grad=True)
    pooled = torch.ones(1, 21, dtype=torch.bool)
    ot_vector, _ = bow_max_pool(x, weight, bias, pooled, chunk_size=7)
    (grad_x,) = torch.autograd.grad(ot_vector.sum(), [x])
    assert grad_x[:20].abs().sum() == 0
    torch.testing.assert_close(grad_x[20], weight.detach().sum(0))
    torch.testing.assert_close(ot_vector[0], (weight @ x[20]).detach())


@pytest.mark.parametrize("chunk_size", [1, 2, 5])
def test_all_equal_logits_split_the_gradient_evenly(chunk_size):
    """A zero weight: every position of a row ties for every entry, each gets 1 / count of its gradient
    (what autograd's ``amax`` gives), and the bias gets all of it."""
    counts, vocab = [5, 0, 3], 6
    pooled = pooled_mask(torch.Generator().manual_seed(0), counts, 7)
    x = torch.randn(8, 4, requires_grad=True)
    weight = torch.zeros(vocab, 4, requires_grad=True)
    bias = torch.arange(vocab, dtype=torch.float32).requires_grad_()
    upstream = torch.randn(3, vocab)
    ot_vector, _ = bow_max_pool(x, weight, bias, pooled, chunk_size=chunk_size)
    grad_x, grad_weight, grad_bias = torch.autograd.grad((ot_vector * upstream).sum(), [x, weight, bias])
    torch.testing.assert_close(ot_vector, torch.stack([bias, torch.zeros(vocab), bias]).detach())
    torch.testing.assert_close(grad_bias, upstream[0] + upstream[2])
    share = torch.cat([upstream[0].expand(5, -1) / 5, upstream[2].expand(3, -1) / 3])
    torch.testing.assert_close(grad_weight, share.T @ x.detach())
    torch.testing.assert_close(grad_x, torch.zeros_like(x))  # weight is zero
    assert_same_as_unfused([x, weight, bias], pooled, None, upstream, chunk_size)


def test_rows_without_pooled_positions_get_zeros_and_no_gradient():
    pooled = torch.tensor([[False, False, False], [False, True, True]])
    x, weight = torch.randn(2, 3, requires_grad=True), torch.randn(5, 3, requires_grad=True)
    ot_vector, mlm = bow_max_pool(x, weight, None, pooled, torch.tensor([-100, -100]))
    assert not ot_vector[0].any() and mlm.item() == 0.0
    torch.autograd.grad(ot_vector.sum() + mlm, [x, weight])  # no NaN, no error with a None bias


def test_without_grad_the_values_are_the_same():
    leaves, pooled, labels, _ = problem(3, [3, 4, 0, 6])
    with torch.no_grad():
        ours = bow_max_pool(*leaves, pooled, labels, chunk_size=5)
        theirs = unfused(pooled, labels)(*leaves)
    for mine, reference in zip(ours, theirs, strict=True):
        assert_relatively_close(mine, reference)


def test_bad_arguments_are_named():
    x, weight = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match="pooled"):
        bow_max_pool(x, weight, None, torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="chunk_size"):
        bow_max_pool(x, weight, None, torch.ones(1, 3, dtype=torch.bool), chunk_size=0)


def saved_bytes(function) -> int:
    """Bytes of the distinct tensors autograd saves for backward while ``function`` runs, parameters
    and the inputs excepted (they exist anyway)."""
    seen: dict[int, int] = {}

    def pack(tensor):
        if not isinstance(tensor, torch.nn.Parameter) and not tensor.is_sparse:
            storage = tensor.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        function()
    return sum(seen.values())


def test_tensors_saved_for_backward_are_far_below_n_by_v():
    """A 30,522 vocabulary and 1,200 pooled positions: the unfused path keeps the N x V logits (and more),
    the chunked one less than a tenth of N x V x 4 bytes."""
    generator = torch.Generator().manual_seed(0)
    counts, hidden, vocab = [300, 300, 0, 300, 300], 32, 30522
    pooled = pooled_mask(generator, counts, 320)
    x = torch.randn(sum(counts), hidden, generator=generator, requires_grad=True)
    weight = torch.nn.Parameter(torch.randn(vocab, hidden, generator=generator) * 0.1)
    bias = torch.nn.Parameter(torch.zeros(vocab))
    labels = torch.randint(vocab, (sum(counts),), generator=generator)
    n_by_v = sum(counts) * vocab * 4
    ours = saved_bytes(lambda: bow_max_pool(x, weight, bias, pooled, labels))
    theirs = saved_bytes(lambda: unfused(pooled, labels)(x, weight, bias))
    assert theirs >= n_by_v  # the measurement sees the logits where they are kept
    assert ours < n_by_v / 10, (ours, n_by_v)


# --- DupMAELoss as a whole, against its pre-#20 implementation on the same masks ---


def loss_and_gradients(loss, terms):
    loss.zero_grad(set_to_none=True)
    values = terms()
    sum(values.values()).backward()
    gradients = {name: p.grad.clone() for name, p in loss.named_parameters() if p.grad is not None}
    return {name: value.detach() for name, value in values.items()}, gradients


TEXTS = [
    "",  # no pooled token
    "word",
    "two words",
    "the the the the",  # repeated tokens
    "a b c",
    "Retrieval-oriented pre-training reconstructs the input from its sentence embedding, again and again.",
]


@pytest.mark.parametrize("token_rules", ["authors", "skip_special"])
@pytest.mark.parametrize("chunk_size", [1, 7, None])
def test_dupmae_loss_equals_its_unfused_implementation(tiny_model, chunk_size, token_rules):
    """Loss terms and the gradient of every parameter (encoder, decoder, MLM head), padded batch, under
    either rule for the pooled positions."""
    loss = DupMAELoss(tiny_model, chunk_size=chunk_size, token_rules=token_rules).eval()
    features = tiny_model.preprocess(TEXTS)
    assert (features["attention_mask"] == 0).any()
    masks = loss.make_masks(features, generator=torch.Generator().manual_seed(0))
    ours = loss_and_gradients(loss, lambda: loss.compute_loss_terms(features, masks))
    theirs = loss_and_gradients(loss, lambda: reference_dupmae_terms(loss, features, masks))
    for name in theirs[0]:
        assert_relatively_close(ours[0][name], theirs[0][name])
    assert ours[1].keys() == theirs[1].keys()
    # The attention key biases' gradients are 0 in exact arithmetic (softmax ignores a per-query shift)
    # and ~1e-11 from rounding: a scale of 1e-4 keeps them from being judged relative to noise.
    for name in theirs[1]:
        assert_relatively_close(ours[1][name], theirs[1][name], floor=1e-4)


def test_dupmae_loss_under_bf16_autocast(tiny_model):
    """Under bf16 autocast: the same loss terms (<= 1e-5). Gradients cannot match to 1e-5 (see
    ``test_bf16_autocast_with_the_mlm_term``) and bf16 rounding differences grow through the encoder's
    backward, so each parameter's gradient is judged by its distance to the float32 gradient against the
    unfused bf16 path's distance. Measured here: ~0.75% vs ~0.48% mean relative distance (the fused path
    is further from float32 by ~1.6x, max 1.9% vs 0.9%; the cause is not pinned down: the function alone
    is as close as the unfused path, ``test_max_pool_under_bf16_autocast_equals_the_unfused_path``).
    The bound: at most 4x the unfused path's distance (2.7x measured for the head's LayerNorm weight), plus
    1e-3 of the float32 norm."""
    loss = DupMAELoss(tiny_model, chunk_size=7).eval()
    features = tiny_model.preprocess(TEXTS)
    masks = loss.make_masks(features, generator=torch.Generator().manual_seed(1))
    exact = loss_and_gradients(loss, lambda: reference_dupmae_terms(loss, features, masks))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = loss_and_gradients(loss, lambda: loss.compute_loss_terms(features, masks))
        theirs = loss_and_gradients(loss, lambda: reference_dupmae_terms(loss, features, masks))
    for name in theirs[0]:
        assert_relatively_close(ours[0][name], theirs[0][name])
    for name, exact_grad in exact[1].items():
        ours_error = (ours[1][name] - exact_grad).norm().item()
        theirs_error = (theirs[1][name] - exact_grad).norm().item()
        assert ours_error <= 4 * theirs_error + 1e-3 * exact_grad.norm().item(), (
            name,
            ours_error,
            theirs_error,
        )


def test_bad_chunk_size_is_named(tiny_model):
    with pytest.raises(ValueError, match="chunk_size"):
        DupMAELoss(tiny_model, chunk_size=0)
