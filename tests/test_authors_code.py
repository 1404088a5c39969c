"""The golden test: RetroMAELoss and DupMAELoss against the authors' own code.

``tests/data/authors_golden.{json,safetensors}`` holds what the authors' ``RetroMAECollator`` /
``DupMAECollator`` and ``RetroMAEForPretraining`` / ``DupMAEForPretraining`` (staoxiao/RetroMAE at
ee375876a5e571617e37dd43450decc7865e2a07, transformers 4.46.3, eval mode) produced on 8 real texts and a
seeded tiny BERT: the collator outputs, the weights, every loss term, the gradients. It is written by
``benchmarks/authors_golden.py`` (see there, and docs/faithfulness.md, for how to regenerate it). Here
our losses get the same weights (the authors' decoder parameter names mapped onto
:class:`retromae_st.decoder.EnhancedDecoderLayer`) and the same masks, in eval mode, and every term and
gradient must agree within ``RTOL`` relative.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from benchmarks.authors_golden import (
    GROUPS,
    REGENERATED,
    gradient_sketch,
    seeded_weight,
    tensor_sha256,
)
from retromae_st import DupMAELoss, RetroMAELoss, load_cls_model
from retromae_st.dupmae_loss import bag_of_words_target, bag_of_words_tokens, ordinary_token_mask
from retromae_st.masking import RetroMAEMasks

FIXTURE = Path(__file__).parent / "data" / "authors_golden"
RTOL = 1e-5
#: The authors' ``BertLayerForDecoder`` submodules and ours (``EnhancedDecoderLayer``).
DECODER_MODULES = {
    "attention.self.query": "query",
    "attention.self.key": "key",
    "attention.self.value": "value",
    "attention.output.dense": "attention_output",
    "attention.output.LayerNorm": "attention_norm",
    "intermediate.dense": "intermediate",
    "output.dense": "output",
    "output.LayerNorm": "output_norm",
}
LOSSES = {"retromae": RetroMAELoss, "dupmae": DupMAELoss}


@pytest.fixture(scope="module")
def golden() -> dict:
    meta = json.loads(FIXTURE.with_suffix(".json").read_text(encoding="utf-8"))
    meta["tensors"] = load_file(str(FIXTURE.with_suffix(".safetensors")))
    return meta


@pytest.fixture(scope="module")
def golden_bert_dir(tmp_path_factory, golden, tokenizer) -> Path:
    """A BertModel folder of the fixture's shape with the MiniLM tokenizer (weights are set per test)."""
    from transformers import BertConfig, BertModel

    directory = tmp_path_factory.mktemp("golden_bert")
    BertModel(BertConfig(**golden["config"])).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def authors_weight(golden: dict, name: str) -> torch.Tensor:
    if name in REGENERATED:
        record = golden["regenerated"][name]
        value = seeded_weight(name, tuple(record["shape"]))
        assert tensor_sha256(value) == record["sha256"], f"{name} rebuilt differently from the fixture's"
        return value
    return golden["tensors"][f"weights/{name}"]


def our_parameter(loss: RetroMAELoss, authors_name: str) -> torch.nn.Parameter:
    """Our parameter that plays the role of the authors' ``bert.*`` / ``cls.*`` / ``c_head.*`` one."""
    group, _, rest = authors_name.partition(".")
    if group == "bert":
        return loss.transformer.auto_model.get_parameter(rest)
    if group == "cls":
        return loss.mlm_head.get_parameter(rest)
    module, _, leaf = rest.rpartition(".")
    return loss.decoder.get_parameter(f"{DECODER_MODULES[module]}.{leaf}")


def build_loss(method: str, golden: dict, directory: Path, **options) -> tuple[RetroMAELoss, dict]:
    """Our loss on the fixture's weights, in eval mode; returns it and ``{authors name: our parameter}``."""
    model = load_cls_model(str(directory), max_seq_length=golden["max_seq_length"])
    loss = LOSSES[method](
        model,
        encoder_mask_ratio=golden["encoder_mlm_probability"],
        decoder_mask_ratio=golden["decoder_mlm_probability"],
        **({"bow_loss_weight": golden["bow_loss_weight"]} if method == "dupmae" else {}),
        **options,
    )
    names = list(golden["methods"][method]["parameter_norms"])
    parameters = {name: our_parameter(loss, name) for name in names}
    with torch.no_grad():
        for name, parameter in parameters.items():
            parameter.copy_(authors_weight(golden, name))
    # The mapping covers every parameter of our loss once (the tied projection is the embeddings), but the
    # BertModel's pooler, which BertForMaskedLM does not have and no term uses.
    mapped = set(map(id, parameters.values()))
    assert len(mapped) == len(parameters)
    unmapped = [name for name, p in loss.named_parameters() if id(p) not in mapped]
    assert unmapped and all(".pooler." in name for name in unmapped), unmapped
    loss.eval()
    return loss, parameters


def authors_batch(golden: dict, method: str) -> tuple[dict[str, torch.Tensor], RetroMAEMasks]:
    """Our features and masks from the authors' collator outputs."""
    tensors = golden["tensors"]
    attention = tensors[f"{method}/encoder_attention_mask"]
    input_ids = tensors[f"{method}/decoder_input_ids"]
    features = {
        "input_ids": input_ids,
        "attention_mask": attention,
        "token_type_ids": torch.zeros_like(input_ids),
    }
    visible = tensors[f"{method}/decoder_attention_mask"].bool()
    # The authors' padding rows are all hidden (a uniform softmax over every key under their additive mask)
    # and carry no label; SDPA needs one visible key per row, so they are shown [CLS], as ours are.
    visible[:, :, 0] |= ~attention.bool()
    masks = RetroMAEMasks(
        tensors[f"{method}/encoder_input_ids"],
        tensors[f"{method}/encoder_labels"],
        tensors[f"{method}/decoder_labels"],
        visible,
    )
    return features, masks


def terms_and_gradients(
    loss, parameters, features, masks
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    loss.zero_grad(set_to_none=True)
    terms = loss.compute_loss_terms(features, masks)
    sum(terms.values()).backward()
    gradients = {
        name: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone()
        for name, p in parameters.items()
    }
    return {name: value.item() for name, value in terms.items()}, gradients


def relative_difference(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    ours, theirs = ours.double(), theirs.double()
    return ((ours - theirs).norm() / theirs.norm().clamp(min=1e-30)).item()


def group_of(name: str) -> str:
    return next(group for group, prefix in GROUPS.items() if name.startswith(prefix))


def relative_differences(method: str, golden: dict, terms: dict, gradients: dict) -> dict[str, float]:
    """Relative difference from the authors' record of every term, the total, each group's gradient norm,
    each parameter's gradient norm and each parameter's gradient (``||ours - theirs|| / ||theirs||``)."""
    record, tensors = golden["methods"][method], golden["tensors"]
    differences = {}
    for name, value in terms.items():
        expected = record["terms"][name]
        differences[f"term {name}"] = abs(value - expected) / abs(expected)
    differences["total loss"] = abs(sum(terms.values()) - record["loss"]) / abs(record["loss"])

    squares = dict.fromkeys(GROUPS, 0.0)
    for name, gradient in gradients.items():
        squares[group_of(name)] += gradient.double().norm().item() ** 2
    for group, value in squares.items():
        expected = record["group_norms"][group]
        differences[f"{group} gradient norm"] = abs(value**0.5 - expected) / expected

    for name, gradient in gradients.items():
        expected_norm = record["parameter_norms"][name]
        if name.endswith("attention.self.key.bias"):
            # Zero in exact arithmetic (a softmax ignores a shift of its inputs): float noise on both sides,
            # which must stay far below the group's gradient.
            noise = max(gradient.double().norm().item(), expected_norm)
            differences[f"gradient of {name}"] = noise / record["group_norms"][group_of(name)]
            continue
        differences[f"gradient norm of {name}"] = (
            abs(gradient.double().norm().item() - expected_norm) / expected_norm
        )
        if f"{method}/grad/{name}" in tensors:
            error = (gradient.double() - tensors[f"{method}/grad/{name}"].double()).norm().item()
        else:
            sketch = tensors[f"{method}/grad_sketch/{name}"]
            # ||R e|| / ||R g|| estimates ||e|| / ||g|| (see gradient_sketch).
            error = (gradient_sketch(gradient) - sketch).norm().item() * expected_norm / sketch.norm().item()
        differences[f"gradient of {name}"] = error / expected_norm
    return differences


def mismatches(method: str, golden: dict, terms: dict, gradients: dict) -> list[str]:
    """Every disagreement with the authors' record beyond ``RTOL``, described; empty when all agree."""
    expected_terms = golden["methods"][method]["terms"]
    problems = []
    for name, value in relative_differences(method, golden, terms, gradients).items():
        if value > RTOL:
            detail = f"relative difference {value:.3g}"
            if name.startswith("term "):
                term = name.removeprefix("term ")
                detail += f" (ours {terms[term]:.8g}, authors {expected_terms[term]:.8g})"
            problems.append(f"{name}: {detail}")
    return problems


@pytest.mark.parametrize("method", ["retromae", "dupmae"])
def test_same_terms_and_gradients_as_the_authors_code(method, golden, golden_bert_dir):
    loss, parameters = build_loss(method, golden, golden_bert_dir)
    features, masks = authors_batch(golden, method)
    terms, gradients = terms_and_gradients(loss, parameters, features, masks)
    expected_names = {"encoder_mlm", "decoder_mlm"} | ({"bow"} if method == "dupmae" else set())
    assert set(terms) == expected_names
    assert mismatches(method, golden, terms, gradients) == []
    assert all(p.grad is None for name, p in loss.named_parameters() if ".pooler." in name)


@pytest.mark.parametrize("method", ["retromae", "dupmae"])
def test_our_decoder_labels_are_the_authors_collators(method, golden, golden_bert_dir):
    """The decoder's labels are deterministic: every position but the first and last of a row, [UNK] included."""
    loss, _ = build_loss(method, golden, golden_bert_dir)
    features, _ = authors_batch(golden, method)
    masks = loss.make_masks(features, generator=torch.Generator().manual_seed(0))
    assert torch.equal(masks.decoder_labels, golden["tensors"][f"{method}/decoder_labels"])


def test_our_bag_of_words_target_and_pool_are_the_authors(golden, golden_bert_dir):
    """DupMAE's BoW target equals the authors' collator's ``bag_word_weight`` exactly ([UNK] counted, 1/n
    assigned once per distinct token), and the OT max-pool reads what their ``ot_embedding`` reads: the
    real positions 1..L-1, [SEP] included."""
    loss, _ = build_loss("dupmae", golden, golden_bert_dir)
    features, _ = authors_batch(golden, "dupmae")
    input_ids, attention = features["input_ids"], features["attention_mask"]
    tensors = golden["tensors"]
    theirs = torch.zeros(input_ids.size(0), loss.head_vocab_size)
    rows, columns = tensors["dupmae/bag_word_weight_index"]
    theirs[rows, columns] = tensors["dupmae/bag_word_weight_value"]
    counted = bag_of_words_tokens(input_ids, attention, loss.special_tokens, loss.token_rules)
    assert torch.equal(bag_of_words_target(input_ids, counted, loss.head_vocab_size), theirs)
    their_pool = (
        attention.bool().clone()
    )  # their ot_embedding: logits[:, 1:] under encoder_attention_mask[:, 1:]
    their_pool[:, 0] = False
    assert torch.equal(
        ordinary_token_mask(input_ids, attention, loss.special_tokens, loss.token_rules), their_pool
    )


def test_fixture_covers_the_cases_it_is_for(golden, tokenizer):
    """8 real texts with [UNK], multi-piece words and truncation; the collators really masked [UNK] words."""
    token_ids = golden["token_ids"]
    limit = golden["max_seq_length"] - 2
    assert len(token_ids) == 8
    assert sum(tokenizer.unk_token_id in ids for ids in token_ids) >= 3
    assert sum(len(ids) > limit for ids in token_ids) >= 2
    assert any(tokenizer.convert_ids_to_tokens(i).startswith("##") for ids in token_ids for i in ids)
    assert tokenizer(golden["texts"], add_special_tokens=False)["input_ids"] == token_ids
    labels = golden["tensors"]["retromae/decoder_labels"]
    assert (labels == tokenizer.unk_token_id).sum() >= 4  # the authors' decoder predicts [UNK]


def test_our_tokenisation_gives_the_authors_batch(golden, golden_bert_dir):
    """ST's tokenisation at max_seq_length gives the collator's input ids: truncation agrees."""
    model = load_cls_model(str(golden_bert_dir), max_seq_length=golden["max_seq_length"])
    features = model.preprocess(golden["texts"])
    for method in LOSSES:
        tensors = golden["tensors"]
        width = tensors[f"{method}/decoder_input_ids"].size(1)
        assert torch.equal(features["input_ids"][:, :width], tensors[f"{method}/decoder_input_ids"])
        assert torch.equal(features["attention_mask"][:, :width], tensors[f"{method}/encoder_attention_mask"])


def test_comparison_notices_a_changed_decoder_mask_or_labels(golden, golden_bert_dir, tokenizer):
    """The check can fail: one decoder visibility flipped, or [UNK] dropped from the decoder's labels
    (our earlier rule), moves the decoder term off the authors' by more than RTOL."""
    loss, _ = build_loss("retromae", golden, golden_bert_dir)
    features, masks = authors_batch(golden, "retromae")
    flipped = masks.decoder_visible.clone()
    flipped[0, 3, 1] = ~flipped[0, 3, 1]
    without_unk = masks.decoder_labels.masked_fill(masks.decoder_labels == tokenizer.unk_token_id, -100)
    expected = golden["methods"]["retromae"]["terms"]["decoder_mlm"]
    with torch.no_grad():
        assert loss.compute_loss_terms(features, masks)["decoder_mlm"].item() == pytest.approx(
            expected, rel=RTOL
        )
        for changed in (
            RetroMAEMasks(masks.encoder_input_ids, masks.encoder_labels, masks.decoder_labels, flipped),
            RetroMAEMasks(masks.encoder_input_ids, masks.encoder_labels, without_unk, masks.decoder_visible),
        ):
            value = loss.compute_loss_terms(features, changed)["decoder_mlm"].item()
            assert value != pytest.approx(expected, rel=RTOL)


@pytest.mark.parametrize("error_kind", ["spread", "one_row"])
def test_gradient_sketch_measures_the_relative_error(error_kind):
    """A sketched gradient is held to the same bound as a stored one: ``||R e|| / ||R g||`` tracks
    ``||e|| / ||g||`` for an error spread over the tensor and for one confined to a single row."""
    generator = torch.Generator().manual_seed(0)
    gradient = torch.randn(3000, 64, generator=generator, dtype=torch.float64)
    error = torch.zeros_like(gradient)
    if error_kind == "spread":
        error += torch.randn(gradient.shape, generator=generator, dtype=torch.float64)
    else:
        error[1234] = torch.randn(64, generator=generator, dtype=torch.float64)
    error *= 3e-5 * gradient.norm() / error.norm()
    sketch = gradient_sketch(gradient)
    estimate = (gradient_sketch(gradient + error) - sketch).norm() / sketch.norm()
    assert 1e-5 < estimate.item() < 1e-4  # the true relative error is 3e-5


def our_mask_statistics(
    loss, features: dict[str, torch.Tensor], draws: int, seed: int
) -> dict[str, torch.Tensor]:
    """The statistics of ``benchmarks.authors_golden.collator_statistics`` for our masks: ``draws`` copies
    of the batch masked at once."""
    batch = features["input_ids"].size(0)
    replicated = {name: value.repeat(draws, 1) for name, value in features.items()}
    masks = loss.make_masks(replicated, generator=torch.Generator().manual_seed(seed))
    real = replicated["attention_mask"].bool()
    labelled = (masks.encoder_labels != -100).view(draws, batch, -1)
    shown = masks.encoder_input_ids.view(draws, batch, -1)
    hidden = (~masks.decoder_visible & real[:, :, None] & real[:, None, :]).view(
        draws, batch, *real.shape[1:], -1
    )
    labels_per_row = labelled.sum(2).double()
    hidden_per_row = hidden.sum(3).double()
    return {
        "encoder_label_rate": labelled.double().mean(0),
        "encoder_labels_per_row_mean": labels_per_row.mean(0),
        "encoder_labels_per_row_var": labels_per_row.var(0, correction=0),
        "share_shown_as_mask": (labelled & (shown == loss.mask_token_id)).sum() / labelled.sum(),
        "share_shown_as_themselves": (labelled & (shown == features["input_ids"][None])).sum()
        / labelled.sum(),
        "decoder_hidden_rate": hidden.double().mean(0),
        "decoder_hidden_per_row_mean": hidden_per_row.mean(0),
        "decoder_hidden_per_row_var": hidden_per_row.var(0, correction=0),
    }


def statistical_mismatches(
    ours: dict, theirs: dict, draws: int, their_draws: int, sigmas: float = 5.0
) -> list[str]:
    """Cells where our rate or mean differs from the authors' by more than ``sigmas`` standard errors."""
    problems = []
    for name in ("encoder_label_rate", "decoder_hidden_rate"):
        p, q = ours[name], theirs[name].double()
        pooled = (p * draws + q * their_draws) / (draws + their_draws)
        error = (pooled * (1 - pooled) * (1 / draws + 1 / their_draws)).sqrt()
        bad = (p - q).abs() > sigmas * error + 1e-9
        problems += [
            f"{name}{tuple(i)}: ours {p[tuple(i)]:.4f}, authors {q[tuple(i)]:.4f}"
            for i in bad.nonzero().tolist()
        ]
    for name in ("encoder_labels_per_row", "decoder_hidden_per_row"):
        p, q = ours[f"{name}_mean"], theirs[f"{name}_mean"].double()
        error = (ours[f"{name}_var"] / draws + theirs[f"{name}_var"].double() / their_draws).sqrt()
        bad = (p - q).abs() > sigmas * error + 1e-9
        problems += [
            f"{name}{tuple(i)}: ours {p[tuple(i)]:.4f}, authors {q[tuple(i)]:.4f}"
            for i in bad.nonzero().tolist()
        ]
    labels = float(theirs["encoder_labels_per_row_mean"].sum()) * their_draws
    for name, share in (("share_shown_as_mask", 0.8), ("share_shown_as_themselves", 0.1)):
        error = (share * (1 - share) / labels) ** 0.5 * 2**0.5
        if abs(float(ours[name]) - float(theirs[name])) > sigmas * error:
            problems.append(f"{name}: ours {float(ours[name]):.4f}, authors {float(theirs[name]):.4f}")
    return problems


def test_our_masks_are_distributed_as_the_authors_collator_makes_them(golden, golden_bert_dir):
    """Our masks on the fixture's texts ([UNK] included) against 2000 draws of the authors' real
    RetroMAECollator: per-position encoder label rates, labels per row, the 80/10/10 shares, and the rate at
    which the decoder hides each key from each query, all within 5 standard errors."""
    loss, _ = build_loss("retromae", golden, golden_bert_dir)
    features, _ = authors_batch(golden, "retromae")
    theirs = {
        name.removeprefix("statistics/"): value
        for name, value in golden["tensors"].items()
        if name.startswith("statistics/")
    }
    draws = 2000
    ours = our_mask_statistics(loss, features, draws, seed=5)
    assert statistical_mismatches(ours, theirs, draws, golden["statistics"]["draws"]) == []


def test_the_old_token_rules_are_told_apart(golden, golden_bert_dir):
    """``token_rules="skip_special"`` (no [UNK] in the BoW target, [SEP] left out of the max-pool, [UNK] never
    predicted) does not give the authors' numbers: the check sees the difference."""
    loss, _ = build_loss("dupmae", golden, golden_bert_dir, token_rules="skip_special")
    features, masks = authors_batch(golden, "dupmae")
    with torch.no_grad():
        bow = loss.compute_loss_terms(features, masks)["bow"].item()
    assert bow != pytest.approx(golden["methods"]["dupmae"]["terms"]["bow"], rel=RTOL)
    ours = loss.make_masks(features, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(ours.decoder_labels, golden["tensors"]["dupmae/decoder_labels"])
