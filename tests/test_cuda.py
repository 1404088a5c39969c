"""The CUDA paths (``pytest -m cuda``; every test here skips without a CUDA device).

Run by ``benchmarks/gpu_check.py`` on a GPU machine. Each compares the CUDA path with the CPU path on
the same inputs: masks bit for bit (same random draws), the decoder's SDPA and the chunked BoW max-pool
within float tolerance, DupMAE pooling, and one fp16 / bf16 training step.
"""

from __future__ import annotations

import pytest
import torch

from retromae_st import DupMAELoss, RetroMAELoss, build_dupmae_model
from retromae_st.bow_max_pool import bow_max_pool
from retromae_st.masking import retromae_masks, special_token_table, word_start_table

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CUDA = torch.device("cuda")


@pytest.fixture()
def cpu_draws_everywhere(monkeypatch):
    """Random draws of CUDA tensors made on the CPU from the (CPU) generator passed, then copied: the
    CUDA path then sees exactly the numbers the CPU path sees."""
    rand, randint, random_ = torch.rand, torch.randint, torch.Tensor.random_

    def on_cpu(draw, *args, device=None, generator=None, **kwargs):
        return draw(*args, generator=generator, **kwargs).to(device or "cpu")

    monkeypatch.setattr(torch, "rand", lambda *a, **k: on_cpu(rand, *a, **k))
    monkeypatch.setattr(torch, "randint", lambda *a, **k: on_cpu(randint, *a, **k))

    def tensor_random_(self, *args, generator=None, **kwargs):
        if self.device.type == "cpu":
            return random_(self, *args, generator=generator, **kwargs)
        drawn = random_(torch.empty_like(self, device="cpu"), *args, generator=generator, **kwargs)
        return self.copy_(drawn)

    monkeypatch.setattr(torch.Tensor, "random_", tensor_random_)


def test_masks_on_cuda_equal_the_cpu_path_bit_for_bit(tokenizer, sample_texts, cpu_draws_everywhere):
    batch = tokenizer(sample_texts[:16], padding=True, truncation=True, max_length=96, return_tensors="pt")
    tables = word_start_table(tokenizer), special_token_table(tokenizer)

    def masks(device):
        return retromae_masks(
            batch["input_ids"].to(device),
            batch["attention_mask"].to(device),
            tables[0].to(device),
            tables[1].to(device),
            mask_token_id=tokenizer.mask_token_id,
            vocab_size=len(tokenizer),
            encoder_mask_ratio=0.3,
            decoder_mask_ratio=0.5,
            generator=torch.Generator().manual_seed(7),
        )

    on_cpu, on_cuda = masks("cpu"), masks(CUDA)
    for name in ("encoder_input_ids", "encoder_labels", "decoder_labels", "decoder_visible"):
        assert torch.equal(getattr(on_cpu, name), getattr(on_cuda, name).cpu()), name


def test_decoder_sdpa_on_cuda_equals_cpu(tiny_model, sample_texts):
    loss = RetroMAELoss(tiny_model).eval()
    features = tiny_model.preprocess(sample_texts[:8])
    masks = loss.make_masks(features, generator=torch.Generator().manual_seed(0))
    hidden = torch.randn(8, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        query, key_value = loss.decoder_inputs(hidden, features["input_ids"])
        expected = loss.decoder(query, key_value, masks.decoder_visible)
        loss.to(CUDA)
        got = loss.decoder(query.to(CUDA), key_value.to(CUDA), masks.decoder_visible.to(CUDA))
    torch.testing.assert_close(got.cpu(), expected, atol=1e-4, rtol=1e-4)


def test_bow_max_pool_on_cuda_equals_cpu():
    generator = torch.Generator().manual_seed(0)
    pooled = torch.rand(6, 40, generator=generator) < 0.6
    pooled[2] = False
    n = int(pooled.sum())
    leaves = [torch.randn(n, 16, generator=generator), torch.randn(300, 16, generator=generator)]
    leaves.append(torch.randn(300, generator=generator))
    labels = torch.randint(300, (n,), generator=generator)
    labels[torch.rand(n, generator=generator) < 0.6] = -100
    upstream = torch.randn(6, 300, generator=generator)

    def run(device):
        inputs = [leaf.to(device).requires_grad_() for leaf in leaves]
        ot_vector, mlm = bow_max_pool(*inputs, pooled.to(device), labels.to(device), chunk_size=17)
        grads = torch.autograd.grad((ot_vector * upstream.to(device)).sum() + mlm, inputs)
        return [tensor.detach().cpu() for tensor in (ot_vector, mlm, *grads)]

    for got, expected in zip(run(CUDA), run("cpu"), strict=True):
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_dupmae_pooling_on_cuda_equals_cpu(tiny_model, sample_texts):
    model = build_dupmae_model(DupMAELoss(tiny_model), top_k=32)
    expected = model.encode(sample_texts[:16], convert_to_tensor=True)
    model.to(CUDA)
    got = model.encode(sample_texts[:16], convert_to_tensor=True, device="cuda")
    torch.testing.assert_close(got.cpu(), expected.cpu(), atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("loss_class", [RetroMAELoss, DupMAELoss], ids=["retromae", "dupmae"])
def test_mixed_precision_training_step(tiny_model, sample_texts, dtype, loss_class):
    """One optimiser step under autocast (fp16 with a gradient scaler, as the trainer's fp16=True does):
    finite terms, finite gradients, parameters moved."""
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    loss = loss_class(tiny_model).to(CUDA).train()
    optimizer = torch.optim.AdamW(loss.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    features = {key: value.to(CUDA) for key, value in tiny_model.preprocess(sample_texts[:8]).items()}
    before = [p.detach().clone() for p in loss.parameters()]
    with torch.autocast("cuda", dtype=dtype):
        terms = loss([features])
    assert all(torch.isfinite(value) for value in terms.values()), terms
    scaler.scale(sum(terms.values())).backward()
    scaler.unscale_(optimizer)
    assert all(torch.isfinite(p.grad).all() for p in loss.parameters() if p.grad is not None)
    scaler.step(optimizer)
    scaler.update()
    moved = [not torch.equal(a, p.detach()) for a, p in zip(before, loss.parameters(), strict=True)]
    assert sum(moved) > len(moved) // 2
