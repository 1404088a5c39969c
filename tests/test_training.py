"""RetroMAELoss inside the sentence-transformers trainer: checkpoints, resume, fit, save/reload."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

from retromae_st import RetroMAELoss, load_cls_model
from retromae_st.checkpointing import LOSS_STATE_DIR


def make_trainer(model_dir, texts, output_dir, max_steps, save_steps=None, seed=7):
    torch.manual_seed(0)
    model = load_cls_model(str(model_dir), max_seq_length=32)
    loss = RetroMAELoss(model)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=8,
        learning_rate=5e-4,
        logging_steps=1,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        report_to="none",
        seed=seed,
        dataloader_drop_last=True,
        disable_tqdm=True,
    )
    dataset = Dataset.from_dict({"text": texts})
    return SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss), model, loss


def logged_terms(trainer):
    return [
        (entry["step"], entry["encoder_mlm"], entry["decoder_mlm"])
        for entry in trainer.state.log_history
        if "encoder_mlm" in entry
    ]


def test_checkpoints_hold_loss_state_and_resume_matches_uninterrupted_run(
    tiny_bert_dir, sample_texts, tmp_path
):
    texts = sample_texts[:96]
    full, _, full_loss = make_trainer(tiny_bert_dir, texts, tmp_path / "full", max_steps=8)
    full.train()

    first, _, _ = make_trainer(tiny_bert_dir, texts, tmp_path / "parts", max_steps=8, save_steps=4)
    first.train()
    checkpoint = tmp_path / "parts" / "checkpoint-4"
    assert (checkpoint / LOSS_STATE_DIR / "loss.safetensors").is_file()

    resumed, _, resumed_loss = make_trainer(
        tiny_bert_dir, texts, tmp_path / "parts", max_steps=8, save_steps=4
    )
    # A fresh loss starts from other decoder weights: resume must overwrite them.
    assert not torch.equal(resumed_loss.decoder.query.weight, full_loss.decoder.query.weight)
    resumed.train(resume_from_checkpoint=str(checkpoint))

    expected = {step: terms for step, *terms in logged_terms(full)}
    got = {step: terms for step, *terms in logged_terms(resumed) if step > 4}
    assert sorted(got) == [5, 6, 7, 8]
    for step in got:
        assert got[step] == pytest.approx(expected[step], abs=1e-4), step
    for key, tensor in full_loss.training_state_dict().items():
        assert torch.allclose(resumed_loss.training_state_dict()[key], tensor, atol=1e-5), key


def test_resume_with_true_finds_last_checkpoint(tiny_bert_dir, sample_texts, tmp_path):
    texts = sample_texts[:64]
    first, _, first_loss = make_trainer(tiny_bert_dir, texts, tmp_path / "run", max_steps=4, save_steps=4)
    first.train()
    saved = {k: v.clone() for k, v in first_loss.training_state_dict().items()}
    again, _, again_loss = make_trainer(tiny_bert_dir, texts, tmp_path / "run", max_steps=4, save_steps=4)
    again.train(resume_from_checkpoint=True)  # nothing left to train: state is just restored
    for key, tensor in saved.items():
        assert torch.equal(again_loss.training_state_dict()[key], tensor), key


def test_model_fit_trains_and_checkpoints_the_loss(tiny_bert_dir, sample_texts, tmp_path):
    from sentence_transformers.sentence_transformer.readers import InputExample
    from torch.utils.data import DataLoader

    model = load_cls_model(str(tiny_bert_dir), max_seq_length=32)
    loss = RetroMAELoss(model)
    before = loss.decoder.query.weight.detach().clone()
    examples = [InputExample(texts=[text]) for text in sample_texts[:48]]
    loader = DataLoader(examples, batch_size=8, shuffle=True)
    model.fit(
        train_objectives=[(loader, loss)],
        epochs=1,
        checkpoint_path=str(tmp_path / "ckpt"),
        checkpoint_save_steps=3,
        show_progress_bar=False,
    )
    assert not torch.equal(loss.decoder.query.weight, before), "the decoder was not optimised"
    saved = list((tmp_path / "ckpt").glob(f"checkpoint-*/{LOSS_STATE_DIR}/*.safetensors"))
    assert saved, "model.fit checkpoints carry no loss state"


def test_saved_model_loads_in_fresh_process_without_retromae_st(tiny_bert_dir, sample_texts, tmp_path):
    trainer, model, _ = make_trainer(tiny_bert_dir, sample_texts[:32], tmp_path / "out", max_steps=2)
    trainer.train()
    path = tmp_path / "final"
    model.save(str(path))
    modules = json.loads((path / "modules.json").read_text())
    assert all("retromae_st" not in module["type"] for module in modules)
    texts = sample_texts[:5]
    expected = model.encode(texts, convert_to_numpy=True)
    script = (
        "import sys, json, numpy\n"
        "from sentence_transformers import SentenceTransformer\n"
        f"model = SentenceTransformer({str(path)!r}, device='cpu')\n"
        f"emb = model.encode({texts!r}, convert_to_numpy=True)\n"
        "assert 'retromae_st' not in sys.modules\n"
        "print(json.dumps(emb.tolist()))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )
    reloaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert torch.allclose(torch.tensor(reloaded), torch.tensor(expected), atol=1e-6)
    assert model[1].pooling_mode == "cls"


def test_dataset_with_two_columns_is_rejected_by_name(tiny_bert_dir, sample_texts, tmp_path):
    trainer, _, _ = make_trainer(tiny_bert_dir, sample_texts[:16], tmp_path / "x", max_steps=1)
    trainer.train_dataset = Dataset.from_dict({"text": sample_texts[:16], "other": sample_texts[16:32]})
    with pytest.raises(ValueError, match="exactly one text column"):
        trainer.train()


def test_non_text_column_is_a_clear_error(tiny_bert_dir, tmp_path):
    trainer, _, _ = make_trainer(tiny_bert_dir, ["a"] * 16, tmp_path / "y", max_steps=1)
    trainer.train_dataset = Dataset.from_dict({"text": list(range(16))})
    with pytest.raises((TypeError, ValueError), match="text|str"):
        trainer.train()


def test_cli_pretrain_writes_both_folders(tiny_bert_dir, sample_texts, tmp_path):
    from retromae_st.cli import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(sample_texts[:40] + ["", "   "]), encoding="utf-8")
    output = tmp_path / "run"
    argv = ["pretrain", "--model", str(tiny_bert_dir), "--corpus", str(corpus), "--output", str(output)]
    assert main([*argv, "--max-steps", "2", "--batch-size", "8", "--max-seq-length", "32"]) == 0
    assert (output / "final" / "modules.json").is_file()
    assert (output / "masked_lm" / "model.safetensors").is_file()
    assert (
        main(
            [
                "pretrain",
                "--model",
                str(tiny_bert_dir),
                "--corpus",
                str(tmp_path / "missing.txt"),
                "--output",
                str(output),
            ]
        )
        == 2
    )


def test_max_grad_norm_clips_model_and_loss_parameters_jointly(tiny_bert_dir, sample_texts, tmp_path):
    """The decoder and head owned by the loss are clipped with the model, by the joint norm (as the
    authors' Trainer clipped their single encoder-decoder module), and the logged grad_norm is that norm."""
    from transformers import TrainerCallback

    trainer, model, loss = make_trainer(tiny_bert_dir, sample_texts, tmp_path / "out", max_steps=3)
    trainer.args.max_grad_norm = 1e-3
    model_params = {id(p) for p in model.parameters()}
    loss_own = [p for p in loss.parameters() if id(p) not in model_params]
    assert loss_own, "the loss should own decoder parameters"
    seen = []

    class RecordNorms(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            grads = [p.grad for p in list(model.parameters()) + loss_own if p.grad is not None]
            seen.append(
                (
                    torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item(),
                    torch.stack([p.grad.norm() for p in loss_own if p.grad is not None]).norm().item(),
                )
            )

    trainer.add_callback(RecordNorms())
    trainer.train()
    assert len(seen) == 3
    for joint, own in seen:
        assert 0 < own, "the loss's parameters got no gradient"
        assert joint <= 1e-3 * (1 + 1e-4), joint
    logged = [entry["grad_norm"] for entry in trainer.state.log_history if "grad_norm" in entry]
    assert logged and all(value > 1e-3 for value in logged)  # pre-clip joint norm
