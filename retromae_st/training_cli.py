"""``retromae-st pretrain`` and ``retromae-st stage2``: thin layers over
:func:`retromae_st.pretraining.pretrain` and :func:`retromae_st.pretraining.stage2`.

Besides their own flags, both commands take every ``SentenceTransformerTrainingArguments`` field as a
flag (``--gradient_accumulation_steps 4`` or ``--gradient-accumulation-steps 4``, ``--save_steps``,
``--deepspeed``, ``--report_to wandb``, ``--torch_compile``, ``--use_cpu``, ...), generated from the
installed dataclass by ``transformers.HfArgumentParser``'s field parser, so they stay in sync with
transformers. ``--config-file run.yaml`` (or ``.json``) may hold any flag as ``name: value``
(``max_steps: 20000``, ``gradient_accumulation_steps: 4``); the command line wins over the file.

The parsers are built only when one of these commands runs (transformers is imported then), so
``retromae-st --help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

#: Training-argument fields that our own flags set (flag -> field); they are not generated twice.
OWN_FIELDS = {
    "output_dir": "--output",
    "max_steps": "--max-steps",
    "per_device_train_batch_size": "--batch-size",
    "learning_rate": "--learning-rate",
    "seed": "--seed",
    "bf16": "--bf16",
    "resume_from_checkpoint": "--resume-from",
    "group_by_length": "--group-by-length",
}
BF16_CHOICES = {"auto": "auto", "on": True, "off": False}


def trainer_fields() -> list[dataclasses.Field]:
    from sentence_transformers import SentenceTransformerTrainingArguments

    return [
        field
        for field in dataclasses.fields(SentenceTransformerTrainingArguments)
        if field.init and field.name not in OWN_FIELDS
    ]


def field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def add_trainer_arguments(parser: argparse.ArgumentParser) -> None:
    """Every remaining ``SentenceTransformerTrainingArguments`` field as a flag, with the recipe's defaults."""
    from typing import get_type_hints

    from sentence_transformers import SentenceTransformerTrainingArguments
    from transformers import HfArgumentParser

    from retromae_st.pretraining import RECIPE_TRAINING_DEFAULTS, STEP_DEPENDENT_DEFAULTS

    group = parser.add_argument_group(
        "trainer arguments (SentenceTransformerTrainingArguments; --name_with_underscores or --name-with-dashes)"
    )
    hints = get_type_hints(SentenceTransformerTrainingArguments)
    for field in trainer_fields():
        field.type = hints[field.name]
        HfArgumentParser._parse_dataclass_field(group, field)
    parser.set_defaults(**RECIPE_TRAINING_DEFAULTS, **dict.fromkeys(STEP_DEPENDENT_DEFAULTS))
    for action in group._group_actions:
        if action.dest in STEP_DEPENDENT_DEFAULTS:
            action.help = f"{action.help or ''} (recipe default: {STEP_DEPENDENT_DEFAULTS[action.dest]})"
        if action.help:
            action.help = action.help.replace("%", "%%")


def trainer_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The generated trainer flags to pass on: every recipe default, every value the user changed."""
    from retromae_st.pretraining import RECIPE_TRAINING_DEFAULTS, STEP_DEPENDENT_DEFAULTS

    values = {}
    for field in trainer_fields():
        value = getattr(args, field.name)
        if field.name in STEP_DEPENDENT_DEFAULTS:
            if value is not None:
                values[field.name] = value
        elif field.name in RECIPE_TRAINING_DEFAULTS or value != field_default(field):
            values[field.name] = value
    return values


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by ``pretrain`` and ``stage2`` (output, steps, batch, resume, ...)."""
    run = parser.add_argument_group("run")
    run.add_argument(
        "--output",
        "--output_dir",
        "--output-dir",
        dest="output",
        help="run folder: final/ (ST), masked_lm/, dupmae/ (DupMAE), checkpoints/ (required)",
    )
    run.add_argument(
        "--max-steps", "--max_steps", dest="max_steps", type=int, default=1000, help="optimizer steps"
    )
    run.add_argument(
        "--batch-size",
        "--per_device_train_batch_size",
        "--per-device-train-batch-size",
        dest="batch_size",
        type=int,
        default=32,
        help="texts (rows) per device and step",
    )
    run.add_argument(
        "--learning-rate",
        "--learning_rate",
        dest="learning_rate",
        type=float,
        default=1e-4,
        help="peak learning rate",
    )
    run.add_argument(
        "--max-seq-length",
        dest="max_seq_length",
        type=int,
        default=256,
        help="tokens per text, special tokens included",
    )
    run.add_argument("--seed", type=int, default=42, help="model init, data order and masking")
    run.add_argument(
        "--bf16",
        nargs="?",
        const="on",
        default="auto",
        choices=sorted(BF16_CHOICES),
        help="bf16 autocast; auto: on for CUDA devices with bf16 support, off on CPU (on CPU: --bf16 on --use_cpu)",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest complete checkpoint in OUTPUT/checkpoints",
    )
    run.add_argument(
        "--resume-from",
        "--resume_from_checkpoint",
        dest="resume_from",
        default=None,
        help="continue from this checkpoint folder (refused if it is incomplete)",
    )
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in a non-empty OUTPUT (deletes its run folders)",
    )
    run.add_argument(
        "--force",
        action="store_true",
        help="resume even though the run's settings differ from the checkpoint's",
    )
    run.add_argument(
        "--config-file",
        default=None,
        help="YAML or JSON file of flag values (name: value); the command line wins",
    )


def add_mae_arguments(parser: argparse.ArgumentParser) -> None:
    mae = parser.add_argument_group("masked auto-encoding")
    mae.add_argument(
        "--encoder-mask-ratio", type=float, default=0.3, help="whole-word mask ratio of the encoder input"
    )
    mae.add_argument(
        "--decoder-mask-ratio", type=float, default=0.5, help="mask ratio of the decoder's attention"
    )
    mae.add_argument(
        "--bow-loss-weight", type=float, default=0.1, help="DupMAE: weight of the bag-of-words term"
    )
    mae.add_argument(
        "--token-rules",
        choices=["authors", "skip_special"],
        default="authors",
        help="[UNK] and in-text special tokens: as the authors' collator, or kept out of masking/prediction",
    )
    mae.add_argument(
        "--top-k",
        dest="dupmae_top_k",
        type=int,
        default=256,
        help="DupMAE: vocabulary entries kept per text in dupmae/",
    )


def read_config_file(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--config-file: no such file {path}")
    with open(path, encoding="utf-8") as handle:
        if path.endswith((".yaml", ".yml")):
            import yaml

            values = yaml.safe_load(handle)
        else:
            values = json.load(handle)
    if not isinstance(values, dict):
        raise ValueError(f"--config-file {path} must hold a mapping of flag names to values")
    return values


def apply_config_file(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """Sets the defaults of ``parser`` from the ``--config-file`` named in ``argv`` (if any)."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config-file", default=None)
    path = pre.parse_known_args(argv)[0].config_file
    if path is None:
        return
    destinations = {action.dest: action for action in parser._actions}
    for option, action in parser._option_string_actions.items():
        destinations.setdefault(option.lstrip("-").replace("-", "_"), action)
    defaults = {}
    for key, value in read_config_file(path).items():
        action = destinations.get(key) or destinations.get(key.replace("-", "_"))
        if action is None or action.dest == "help":
            raise ValueError(f"--config-file {path}: unknown setting {key!r}")
        defaults[action.dest] = value
    parser.set_defaults(**defaults)


def run_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    if not args.output:
        raise ValueError("--output is required (on the command line or in --config-file)")
    if args.resume and args.resume_from:
        raise ValueError("--resume and --resume-from exclude each other")
    return {
        "max_steps": args.max_steps,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "max_seq_length": args.max_seq_length,
        "seed": args.seed,
        "bf16": BF16_CHOICES[args.bf16] if isinstance(args.bf16, str) else args.bf16,
        "resume_from_checkpoint": args.resume_from or (True if args.resume else None),
        "overwrite": args.overwrite,
        "force": args.force,
        "encoder_mask_ratio": args.encoder_mask_ratio,
        "decoder_mask_ratio": args.decoder_mask_ratio,
        "bow_loss_weight": args.bow_loss_weight,
        "dupmae_top_k": args.dupmae_top_k,
        "token_rules": args.token_rules,
        **trainer_kwargs(args),
    }


def print_result(result) -> None:
    if result.resumed_from:
        print(f"resumed from: {result.resumed_from}")
    if result.packing is not None:
        print(f"packing: {result.packing}")
    if isinstance(result.dropped, dict):
        for name, dropped in result.dropped.items():
            print(f"{name}: rows dropped: {dropped}")
    elif result.dropped is not None:
        print(f"corpus rows dropped: {result.dropped}")
    print(f"sentence-transformers model: {result.sentence_transformer_dir}")
    print(f"masked-LM checkpoint: {result.masked_lm_dir}")
    if result.dupmae_dir:
        print(f"DupMAE model (Transformer + DupMAEPooling): {result.dupmae_dir}")


def command_pretrain(args: argparse.Namespace) -> int:
    from retromae_st.pretraining import pretrain

    if not args.corpus:
        raise ValueError("--corpus is required (on the command line or in --config-file)")
    result = pretrain(
        args.model,
        args.corpus,
        args.output,
        method=args.method,
        pack=args.pack,
        text_field=args.text_field,
        shuffle_buffer_size=args.shuffle_buffer_size,
        group_by_length=args.group_by_length,
        config=args.config,
        tokenizer=args.tokenizer,
        **run_kwargs(args),
    )
    print_result(result)
    return 0


def parse_named(values: Sequence[str], flag: str) -> dict[str, str]:
    named = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep:
            raise ValueError(f"{flag} takes NAME=VALUE, got {value!r}")
        named[name] = rest
    return named


def stage2_data(values: Sequence[str]) -> dict[str, str]:
    """``NAME=PATH`` or ``PATH`` (named by its stem) for each ``--data`` value."""
    data = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or os.path.exists(value):
            path = value
            name = os.path.splitext(os.path.basename(value.rstrip("/")))[0]
        if name in data:
            raise ValueError(f"--data: two datasets are named {name!r}; name them NAME=PATH")
        data[name] = path
    return data


def command_stage2(args: argparse.Namespace) -> int:
    from retromae_st.pretraining import stage2

    if not args.model or not args.data:
        raise ValueError("--model and --data are required (on the command line or in --config-file)")
    mae_columns: Any = args.mae_columns or "all"
    if isinstance(mae_columns, list):
        mae_columns = parse_named(mae_columns, "--mae-columns") if "=" in mae_columns[0] else mae_columns[0]
    columns = {name: value.split(",") for name, value in parse_named(args.columns or [], "--columns").items()}
    result = stage2(
        args.model,
        stage2_data(args.data),
        args.output,
        mae_method=args.mae_method,
        mae_columns=mae_columns,
        columns=columns or None,
        mae_weight=args.mae_weight,
        contrastive_weight=args.contrastive_weight,
        scale=args.scale,
        **run_kwargs(args),
    )
    print_result(result)
    return 0


def add_pretrain_parser(subparsers: argparse._SubParsersAction, argv: Sequence[str]) -> None:
    """Register ``retromae-st pretrain`` with all its flags."""
    parser = subparsers.add_parser(
        "pretrain",
        help="RetroMAE / DupMAE pre-training on a text corpus",
        description="RetroMAE / DupMAE pre-training (retromae_st.pretraining.pretrain).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    start = parser.add_argument_group("model and data")
    start.add_argument(
        "--method", choices=["retromae", "dupmae"], default="retromae", help="pre-training objective"
    )
    start.add_argument(
        "--model", default=None, help="starting checkpoint: folder or hub id (or use --config/--tokenizer)"
    )
    start.add_argument(
        "--config", default=None, help="model config.json (or its folder): start from random weights"
    )
    start.add_argument("--tokenizer", default=None, help="tokenizer folder or hub id for --config")
    start.add_argument(
        "--corpus",
        nargs="+",
        default=None,
        help=".txt (a sentence per line, blank line between documents), .jsonl, .parquet, datasets folders or globs",
    )
    start.add_argument(
        "--text-field", default="text", help="the text's field in .jsonl / column in .parquet and datasets"
    )
    start.add_argument(
        "--shuffle-buffer-size",
        type=int,
        default=10_000,
        help="a streamed corpus is shuffled in a buffer of this many examples (0: file order)",
    )
    start.add_argument(
        "--no-pack",
        dest="pack",
        action="store_false",
        help="train one line per example instead of packing sentences into max-seq-length blocks",
    )
    start.add_argument(
        "--group-by-length",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="batch texts of similar length (unpacked in-memory data; default: off when packing)",
    )
    add_run_arguments(parser)
    add_mae_arguments(parser)
    add_trainer_arguments(parser)
    apply_config_file(parser, argv)
    parser.set_defaults(func=command_pretrain)


def add_stage2_parser(subparsers: argparse._SubParsersAction, argv: Sequence[str]) -> None:
    """Register ``retromae-st stage2`` with all its flags."""
    parser = subparsers.add_parser(
        "stage2",
        help="stage 2: RetroMAE + contrastive learning on pairs / NLI triplets",
        description="RetroMAE + contrastive learning on one or several datasets (retromae_st.pretraining.stage2).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("model and data")
    data.add_argument(
        "--model", default=None, help="stage-1 result, ideally its masked_lm/ folder (required)"
    )
    data.add_argument(
        "--data",
        nargs="+",
        default=None,
        help="[NAME=]PATH ...: .tsv with a header (query/passage[/negative], anchor/positive/negative), .jsonl or datasets folder",
    )
    data.add_argument(
        "--columns", nargs="+", default=None, help="NAME=col1,col2[,col3]: the columns to use, in order"
    )
    data.add_argument(
        "--mae-columns",
        nargs="+",
        default=None,
        help="texts of the MAE term: all | documents | anchor, or NAME=VALUE per dataset (default: all)",
    )
    data.add_argument(
        "--mae-method", choices=["retromae", "dupmae"], default="retromae", help="the MAE term's loss"
    )
    data.add_argument("--mae-weight", type=float, default=1.0, help="weight of the MAE terms")
    data.add_argument("--contrastive-weight", type=float, default=1.0, help="weight of the contrastive term")
    data.add_argument("--scale", type=float, default=20.0, help="contrastive scale (1 / temperature)")
    add_run_arguments(parser)
    add_mae_arguments(parser)
    add_trainer_arguments(parser)
    apply_config_file(parser, argv)
    parser.set_defaults(func=command_stage2)
