"""Everything issue #21 asks a GPU about, in one command (<= 8 minutes on one GPU), one JSON, one table.

    python benchmarks/gpu_check.py [--json gpu_check.json] [--corpus FILE]   # on a CUDA machine
    OMP_NUM_THREADS=1 python benchmarks/gpu_check.py --small               # dry run on CPU, ~1 minute

Pieces (``--only`` runs a subset):

- ``cuda_tests``: ``pytest -m cuda tests/test_cuda.py`` (masks on CUDA equal the CPU path bit for bit, decoder
  SDPA and the BoW max-pool on CUDA equal CPU, DupMAE pooling on CUDA, fp16 and bf16 training steps).
  Without CUDA they skip, and the piece reports it.
- ``train_step``: one training step (``benchmarks/train_step.py``'s ``Runner``: loss forward with masking,
  backward, AdamW) at BERT-base shape, batch 32, lengths 256 and 512, under bf16 autocast, for ``baseline``
  (the authors' way, ``benchmarks/reference_retromae.py``), ``ours`` (``RetroMAELoss``) and ``dupmae``
  (``DupMAELoss``): median ms/step after warm-up (CUDA events; CPU: process time), tokens/s,
  ``torch.cuda.max_memory_allocated`` above the step's start (CPU: peak RSS), the masking share of the step,
  and the attention kernel the decoder's SDPA dispatched to (read from the profiler's op names).
- ``pretrain``: a real ``retromae_st.pretrain`` run with the sentence-transformers trainer (data loading and
  collation included) on the corpus for ``--pretrain-seconds`` of wall time: tokens/s (padded and real) and
  GPU utilisation (pynvml, else ``nvidia-smi``, sampled every second), against ``train_step``'s tokens/s.
- ``pooling``: ``model.encode`` time of the DupMAE representation (``DupMAEPooling``) vs CLS pooling.

``--small`` runs every piece with tiny shapes on whatever device there is (CPU timers off CUDA), to test the
script itself; its figures say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from benchmarks import train_step  # noqa: E402
from retromae_st import DupMAELoss, build_dupmae_model, load_cls_model  # noqa: E402
from retromae_st.dupmae_search import encode_dupmae  # noqa: E402

PIECES = ("cuda_tests", "train_step", "pretrain", "pooling")
DEFAULT_CORPUS = REPO.parent / "shared" / "data" / "corpus" / "corpus.txt"
FALLBACK_CORPUS = REPO / "examples" / "data" / "sample_corpus.txt"


class Timer:
    """Elapsed milliseconds of a block: CUDA events on a GPU, process CPU time elsewhere."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __call__(self, function: Callable[[], object]) -> float:
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            function()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
        begin = time.process_time()
        function()
        return 1000 * (time.process_time() - begin)


def settings(small: bool, device: torch.device) -> dict:
    if small:
        return dict(
            shape="tiny", batch_size=2, lengths=[32, 64], warmup=1, steps=2, pretrain_seconds=5,
            pretrain_batch=8, pretrain_length=64, pooling_texts=64, pooling_length=64,
        )  # fmt: skip
    return dict(
        shape="bert-base", batch_size=32, lengths=[256, 512], warmup=3, steps=20, pretrain_seconds=120,
        pretrain_batch=32, pretrain_length=256, pooling_texts=4096, pooling_length=256,
    )  # fmt: skip


def run_cuda_tests() -> dict:
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-m",
        "cuda",
        "-p",
        "no:cacheprovider",
        "tests/test_cuda.py",
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    summary = completed.stdout.strip().splitlines()[-1] if completed.stdout.strip() else ""
    counts = {
        word: int(number) for number, word in re.findall(r"(\d+) (passed|failed|skipped|error)", summary)
    }
    return {
        "returncode": completed.returncode,
        "summary": summary,
        **counts,
        "seconds": time.perf_counter() - started,
        "output_tail": (completed.stdout + completed.stderr)[-3000:] if completed.returncode else "",
    }


def sdpa_kernel(runner: train_step.Runner) -> str:
    """Which ``scaled_dot_product_attention`` implementation the decoder's forward dispatched to."""
    loss, features = runner.loss, runner.features
    masks = loss.make_masks(features)
    hidden = torch.randn(features["input_ids"].size(0), loss.decoder.query.in_features, device=runner.device)
    with torch.no_grad(), torch.autocast(runner.device.type, dtype=torch.bfloat16):
        query, key_value = loss.decoder_inputs(hidden, features["input_ids"])
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            loss.decoder(query, key_value, masks.decoder_visible)
    names = {event.name for event in profile.events() if "scaled_dot_product" in event.name}
    specific = sorted(name for name in names if name != "aten::scaled_dot_product_attention")
    return ", ".join(specific) or ", ".join(sorted(names)) or "none seen"


def peak_memory_mb(runner: train_step.Runner, step: Callable[[], None]) -> float:
    with train_step.Memory(runner.device) as memory:
        step()
    return memory.peak_mb


def measure_train_step(config: dict, device: torch.device, tokenizer, model_dir: Path) -> list[dict]:
    timer = Timer(device)
    runners = {
        variant: train_step.Runner(variant, model_dir, tokenizer, device)
        for variant in ("baseline", "ours", "dupmae")
    }
    rows = []
    for length in config["lengths"]:
        ids = train_step.batch_ids(tokenizer, config["batch_size"], length)
        results = {}
        for variant, runner in runners.items():
            runner.set_batch(ids)
            autocast = torch.autocast(device.type, dtype=torch.bfloat16)

            def step(runner=runner, autocast=autocast) -> None:
                with autocast:
                    runner.step()

            for _ in range(config["warmup"]):
                step()
            peak = peak_memory_mb(runner, step)
            times = [timer(step) for _ in range(config["steps"])]
            masking = [timer(runner.make_masks) for _ in range(config["steps"])]
            step_ms = statistics.median(times)
            results[variant] = {
                "variant": variant,
                "shape": config["shape"],
                "batch_size": config["batch_size"],
                "length": length,
                "dtype": "bf16",
                "step_ms": step_ms,
                "tokens_per_s": config["batch_size"] * length / step_ms * 1000,
                "peak_mb": peak,
                "masking_ms": statistics.median(masking),
                "masking_share": statistics.median(masking) / step_ms,
                "sdpa_kernel": sdpa_kernel(runner) if variant != "baseline" else "explicit scores (no SDPA)",
                "timer": "cuda events" if device.type == "cuda" else "process cpu time",
            }
        for result in results.values():
            result["step_vs_baseline"] = result["step_ms"] / results["baseline"]["step_ms"]
            result["peak_vs_baseline"] = result["peak_mb"] / results["baseline"]["peak_mb"]
            result["step_vs_ours"] = result["step_ms"] / results["ours"]["step_ms"]
            rows.append(result)
    del runners
    return rows


class UtilisationSampler:
    """GPU utilisation (%) sampled every second in a thread, through pynvml or ``nvidia-smi``."""

    def __init__(self, device: torch.device) -> None:
        self.samples: list[float] = []
        self.source = None
        self._stop = threading.Event()
        if device.type != "cuda":
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
            self._read = lambda: float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            self.source = "pynvml"
        except Exception:  # noqa: BLE001 - no pynvml, or no NVML: try the command line tool
            self._read = self._nvidia_smi
            self.source = "nvidia-smi"
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _nvidia_smi() -> float:
        output = subprocess.run(
            ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True, text=True, timeout=10,
        ).stdout  # fmt: skip
        return float(output.strip().splitlines()[0])

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.samples.append(self._read())
            except Exception:  # noqa: BLE001 - a failed sample is left out, not fatal
                pass

    def __enter__(self) -> UtilisationSampler:
        if self.source:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()

    def summary(self) -> dict:
        if not self.samples:
            return {"source": self.source, "samples": 0}
        return {
            "source": self.source,
            "samples": len(self.samples),
            "mean_percent": statistics.mean(self.samples),
            "median_percent": statistics.median(self.samples),
        }


def measure_pretrain(config: dict, device: torch.device, model_dir: Path, corpus: Path) -> dict:
    """``retromae_st.pretrain`` on ``corpus`` for ``pretrain_seconds`` of wall time, tokens counted at the loss."""
    from transformers import TrainerCallback

    import retromae_st.pretraining as pretraining

    seconds, counts = config["pretrain_seconds"], {"padded": 0, "real": 0, "steps": 0}
    clock: dict[str, float] = {}

    class StopAfter(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if device.type == "cuda":
                torch.cuda.synchronize()
            now = time.perf_counter()
            if state.global_step == 1:  # first step: CUDA/cuBLAS warm-up, not counted
                clock["start"], counts["padded"], counts["real"], counts["steps"] = now, 0, 0, 0
            else:
                counts["steps"] += 1
            clock["end"] = now
            control.should_training_stop = now - clock.get("start", now) >= seconds
            return control

    class CountingTrainer(pretraining.SentenceTransformerTrainer):
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("callbacks", []).append(StopAfter())
            super().__init__(*args, **kwargs)

            def count(module, inputs):
                features = inputs[0][0]
                counts["padded"] += features["input_ids"].numel()
                counts["real"] += int(features["attention_mask"].sum())

            kwargs["loss"].register_forward_pre_hook(count)

    original = pretraining.SentenceTransformerTrainer
    pretraining.SentenceTransformerTrainer = CountingTrainer
    try:
        with tempfile.TemporaryDirectory() as output, UtilisationSampler(device) as sampler:
            pretraining.pretrain(
                str(model_dir),
                str(corpus),
                output,
                max_steps=100_000,
                batch_size=config["pretrain_batch"],
                max_seq_length=config["pretrain_length"],
                bf16=device.type == "cuda" and torch.cuda.is_bf16_supported(),
                use_cpu=device.type != "cuda",
                save_steps=1_000_000,
                dataloader_num_workers=0,
            )
    finally:
        pretraining.SentenceTransformerTrainer = original
    elapsed = clock["end"] - clock["start"]
    return {
        "corpus": str(corpus),
        "batch_size": config["pretrain_batch"],
        "max_seq_length": config["pretrain_length"],
        "steps_timed": counts["steps"],
        "seconds": elapsed,
        "padded_tokens_per_s": counts["padded"] / elapsed if elapsed else float("nan"),
        "real_tokens_per_s": counts["real"] / elapsed if elapsed else float("nan"),
        "gpu_utilisation": sampler.summary(),
        "clock": "wall",
    }


def measure_pooling(config: dict, device: torch.device, model_dir: Path, corpus: Path) -> dict:
    """``encode`` time of the DupMAE representation vs CLS pooling on the same texts and encoder."""
    texts = [line for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = (texts * (config["pooling_texts"] // max(len(texts), 1) + 1))[: config["pooling_texts"]]
    cls_model = load_cls_model(str(model_dir), max_seq_length=config["pooling_length"]).to(device)
    dupmae_model = build_dupmae_model(DupMAELoss(cls_model), top_k=256).to(device)

    def timed(encode: Callable[[list[str]], object]) -> float:
        encode(texts[:64])  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        encode(texts)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    with torch.inference_mode():
        cls_seconds = timed(lambda batch: cls_model.encode(batch, batch_size=128, device=str(device)))
        # What retrieval uses (DupMAERetriever): [CLS] + top-k (indices, values), no dense V-sized output.
        dupmae_seconds = timed(lambda batch: encode_dupmae(dupmae_model, batch, batch_size=128))
    return {
        "texts": len(texts),
        "max_seq_length": config["pooling_length"],
        "cls_seconds": cls_seconds,
        "dupmae_seconds": dupmae_seconds,
        "dupmae_vs_cls": dupmae_seconds / cls_seconds,
        "clock": "wall",
    }


def goals(report: dict) -> dict:
    """Issue #21's goals, read off the measurements (meaningless in ``--small`` mode)."""
    out = {}
    rows = report.get("train_step") or []
    longest = max((row["length"] for row in rows), default=None)
    ours = next((r for r in rows if r["variant"] == "ours" and r["length"] == longest), None)
    if ours:
        out["step <= 0.6x baseline"] = ours["step_vs_baseline"]
        out["peak memory <= 0.6x baseline"] = ours["peak_vs_baseline"]
        out["masking <= 1% of the step"] = max(r["masking_share"] for r in rows if r["variant"] != "baseline")
    pretrain, pooling = report.get("pretrain"), report.get("pooling")
    if pretrain and rows:
        reference = next(
            (r for r in rows if r["variant"] == "ours" and r["length"] == min(r["length"] for r in rows)),
            None,
        )
        out["pretrain tokens/s within 15% of the step benchmark"] = (
            pretrain["padded_tokens_per_s"] / reference["tokens_per_s"]
        )
    if pooling:
        out["DupMAE pooling <= 1.3x CLS encode"] = pooling["dupmae_vs_cls"]
    return out


def print_table(report: dict) -> None:
    print(f"\ndevice: {report['device_name']} | torch {report['torch']} | small={report['small']}")
    tests = report.get("cuda_tests")
    if tests:
        print(f"cuda tests: rc={tests['returncode']} {tests['summary']}")
    rows = report.get("train_step") or []
    if rows:
        print(f"{'shape':>9} {'B':>3} {'L':>4} {'variant':>9} {'ms/step':>9} {'x base':>7} {'tok/s':>9} "
              f"{'peak MB':>9} {'x base':>7} {'mask %':>7}  sdpa")  # fmt: skip
        for r in rows:
            print(
                f"{r['shape']:>9} {r['batch_size']:>3} {r['length']:>4} {r['variant']:>9} {r['step_ms']:>9.1f} "
                f"{r['step_vs_baseline']:>7.2f} {r['tokens_per_s']:>9.0f} {r['peak_mb']:>9.0f} "
                f"{r['peak_vs_baseline']:>7.2f} {100 * r['masking_share']:>7.2f}  {r['sdpa_kernel']}"
            )
    pretrain = report.get("pretrain")
    if pretrain:
        print(
            f"pretrain: {pretrain['steps_timed']} steps in {pretrain['seconds']:.1f} s, "
            f"{pretrain['padded_tokens_per_s']:.0f} padded tok/s ({pretrain['real_tokens_per_s']:.0f} real), "
            f"GPU utilisation {pretrain['gpu_utilisation']}"
        )
    pooling = report.get("pooling")
    if pooling:
        print(
            f"pooling: {pooling['texts']} texts, CLS {pooling['cls_seconds']:.2f} s, DupMAE "
            f"{pooling['dupmae_seconds']:.2f} s ({pooling['dupmae_vs_cls']:.2f}x)"
        )
    for goal, value in report["goals"].items():
        print(f"goal: {goal}: {value:.3f}")
    if report["errors"]:
        print(f"errors: {report['errors']}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--small", action="store_true", help="tiny shapes: a dry run of the script on any device"
    )
    parser.add_argument("--only", nargs="+", choices=PIECES, default=list(PIECES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--corpus", type=Path, default=None, help=f"default {DEFAULT_CORPUS} if present")
    parser.add_argument("--pretrain-seconds", type=float, default=None)
    parser.add_argument("--json", type=Path, default=Path("gpu_check.json"))
    args = parser.parse_args(argv)

    hf_logging.set_verbosity_error()
    device = torch.device(args.device)
    config = settings(args.small, device)
    if args.pretrain_seconds is not None:
        config["pretrain_seconds"] = args.pretrain_seconds
    corpus = args.corpus or (DEFAULT_CORPUS if DEFAULT_CORPUS.is_file() else FALLBACK_CORPUS)
    report: dict = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "small": args.small,
        "settings": config,
        "errors": {},
    }
    tokenizer = train_step.minilm_tokenizer()
    with tempfile.TemporaryDirectory() as directory:
        model_dir = train_step.build_model_dir(config["shape"], tokenizer, Path(directory))
        pieces = {
            "cuda_tests": run_cuda_tests,
            "train_step": lambda: measure_train_step(config, device, tokenizer, model_dir),
            "pretrain": lambda: measure_pretrain(config, device, model_dir, corpus),
            "pooling": lambda: measure_pooling(config, device, model_dir, corpus),
        }
        for name in args.only:
            started = time.perf_counter()
            try:
                report[name] = pieces[name]()
            except Exception as error:  # noqa: BLE001 - one failed piece must not lose the others' figures
                report["errors"][name] = f"{type(error).__name__}: {error}"
            print(f"[{name}: {time.perf_counter() - started:.0f} s]", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    report["goals"] = goals(report)
    args.json.write_text(json.dumps(report, indent=2))
    print_table(report)
    print(f"\nwrote {args.json}")
    return report


if __name__ == "__main__":
    main()
