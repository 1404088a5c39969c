"""load_cls_model on a masked-LM checkpoint: no "LOAD REPORT" for the MLM head and the pooler, which are
expected to differ; a genuinely missing or unknown encoder weight is still reported."""

from __future__ import annotations

import logging

import pytest
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from retromae_st import RetroMAELoss, load_cls_model, save_as_masked_lm
from tests.conftest import build_tiny_bert

MISSING_ENCODER_KEY = "bert.encoder.layer.1.output.dense.weight"


def load_and_capture_warnings(caplog, path) -> str:
    """What transformers logs at WARNING while ``load_cls_model`` loads ``path``."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="transformers"):
        load_cls_model(str(path))
    return "\n".join(record.getMessage() for record in caplog.records)


@pytest.fixture()
def masked_lm_dir(tmp_path, tokenizer):
    return build_tiny_bert(tmp_path / "mlm", tokenizer, with_mlm_head=True)


def test_masked_lm_checkpoint_loads_without_a_report(caplog, masked_lm_dir):
    assert "LOAD REPORT" not in load_and_capture_warnings(caplog, masked_lm_dir)


def tiny_masked_lm_of_family(directory, tokenizer, family: str):
    """A 2-layer ``*ForMaskedLM`` of ``family`` (RoBERTa, XLM-R, ModernBERT) with the MiniLM vocabulary."""
    from transformers import (
        ModernBertConfig,
        ModernBertForMaskedLM,
        RobertaConfig,
        RobertaForMaskedLM,
        XLMRobertaConfig,
        XLMRobertaForMaskedLM,
    )

    sizes = dict(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2)
    sizes.update(intermediate_size=128, pad_token_id=0)
    special = dict(bos_token_id=101, eos_token_id=102, cls_token_id=101, sep_token_id=102)
    model = {
        "roberta": lambda: RobertaForMaskedLM(RobertaConfig(max_position_embeddings=130, **sizes)),
        "xlm-roberta": lambda: XLMRobertaForMaskedLM(XLMRobertaConfig(max_position_embeddings=130, **sizes)),
        "modernbert": lambda: ModernBertForMaskedLM(
            ModernBertConfig(max_position_embeddings=128, **sizes, **special)
        ),
    }[family]()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.mark.parametrize("family", ["roberta", "xlm-roberta", "modernbert"])
def test_masked_lm_checkpoints_of_other_families_load_without_a_report(caplog, tmp_path, tokenizer, family):
    folder = tiny_masked_lm_of_family(tmp_path / family, tokenizer, family)
    assert "LOAD REPORT" not in load_and_capture_warnings(caplog, folder)


def test_our_masked_lm_export_loads_without_a_report(caplog, tmp_path, tiny_model):
    save_as_masked_lm(tiny_model, RetroMAELoss(tiny_model), str(tmp_path / "export"))
    assert "LOAD REPORT" not in load_and_capture_warnings(caplog, tmp_path / "export")


def test_a_missing_encoder_weight_is_still_reported(caplog, masked_lm_dir):
    weights = masked_lm_dir / "model.safetensors"
    state = load_file(weights)
    del state[MISSING_ENCODER_KEY]
    state["bert.encoder.layer.0.unknown_tensor"] = state["cls.predictions.bias"].clone()
    save_file(state, weights, metadata={"format": "pt"})
    report = load_and_capture_warnings(caplog, masked_lm_dir)
    assert "LOAD REPORT" in report
    assert "encoder.layer.1.output.dense.weight" in report and "MISSING" in report
    assert "encoder.layer.0.unknown_tensor" in report and "UNEXPECTED" in report
    assert "cls.predictions" not in report and "pooler" not in report


def test_the_ignore_patterns_are_restored_after_loading(masked_lm_dir):
    before = (
        PreTrainedModel._keys_to_ignore_on_load_unexpected,
        PreTrainedModel._keys_to_ignore_on_load_missing,
    )
    load_cls_model(str(masked_lm_dir))
    after = (
        PreTrainedModel._keys_to_ignore_on_load_unexpected,
        PreTrainedModel._keys_to_ignore_on_load_missing,
    )
    assert after == before
