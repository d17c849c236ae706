"""llama.cpp beside the app on this machine: the reference of the README's decoding table.

    python tools/llamacpp_reference.py FILE.gguf [FILE.gguf ...] [--tokens 128] [--runs 3]

Run by hand (the app does not depend on llama.cpp). It needs llama-cpp-python in the app's
environment (``pip install llama-cpp-python``, which builds llama.cpp from source with the
machine's compiler). Greedy decoding of ``--tokens`` new tokens after the benchmarks'
prompt, batch 1, the threads the app would take now; in alternating rounds:

- bare transformers ``generate`` of SmolLM2 in float32 (the baseline of ``decode_speedup``);
- the app's default decoding path with its per-step records (``core.generation.generate.generate``);
- llama.cpp on each GGUF file, twice: its own completion loop, and a loop that copies each
  step's logits out (as a path keeping the app's records would) and picks the argmax.

Prints medians (tokens/s) and each one ÷ bare transformers as JSON. GGUF files of the same
weights as the app's float32 model can be written by llama.cpp's ``convert_hf_to_gguf.py``
(in the llama-cpp-python source distribution, ``vendor/llama.cpp``) from the app's converted
folder (add ``"architectures": ["LlamaForCausalLM"]`` to a copy of its config.json), with
``--outtype f32``, ``f16``, ``bf16`` or ``q8_0``; the bundled file is Q4_1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf", nargs="+", type=Path)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    missing = [str(p) for p in args.gguf if not p.is_file()]
    if missing:
        print(f"error: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        import llama_cpp
    except ImportError:
        print("error: llama-cpp-python is not installed here", file=sys.stderr)
        return 2
    import numpy as np
    import torch

    from workbench.benchmarks.model_figures import BENCH_PROMPT
    from workbench.core.common.threads import LoadMeter, adapted_threads
    from workbench.core.generation.generate import generate
    from workbench.core.generation.settings import SamplingSettings
    from workbench.core.models.loader import load_model

    n = args.tokens
    loaded = load_model("SmolLM2-135M-Instruct")
    ids = loaded.tokenizer(BENCH_PROMPT, return_tensors="pt")["input_ids"]
    settings = SamplingSettings(max_new_tokens=n, do_sample=False, chat=False)
    with adapted_threads(meter=LoadMeter()) as threads:
        pass
    engines = {str(p): llama_cpp.Llama(model_path=str(p), n_ctx=ids.shape[1] + n + 8,
                                       n_threads=threads, verbose=False) for p in args.gguf}

    def bare() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            out = loaded.model.generate(ids, attention_mask=torch.ones_like(ids),
                                        do_sample=False, max_new_tokens=n, min_new_tokens=n,
                                        pad_token_id=loaded.tokenizer.pad_token_id)
        return (out.shape[1] - ids.shape[1]) / (time.perf_counter() - start)

    def app() -> float:
        with adapted_threads(meter=LoadMeter()):
            result = generate(loaded, BENCH_PROMPT, settings)
        return len(result.token_ids) / result.seconds

    def completion(llm) -> float:
        llm.reset()
        start = time.perf_counter()
        out = llm.create_completion(BENCH_PROMPT, max_tokens=n, temperature=0.0, top_k=1)
        return out["usage"]["completion_tokens"] / (time.perf_counter() - start)

    def logits_loop(llm) -> float:
        llm.reset()
        llm.eval(ids[0].tolist())
        start = time.perf_counter()
        for _ in range(n):
            logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
            llm.eval([int(logits.argmax())])
        return n / (time.perf_counter() - start)

    rates: dict[str, list[float]] = {}
    runs = [("transformers float32, bare generate", bare), ("the app, default path", app)]
    for path, llm in engines.items():
        name = Path(path).name
        runs += [(f"llama.cpp {name}", lambda llm=llm: completion(llm)),
                 (f"llama.cpp {name}, per-step logits copied", lambda llm=llm: logits_loop(llm))]
    for _, measure in runs:  # warm-up
        measure()
    for _ in range(args.runs):
        for label, measure in runs:
            rates.setdefault(label, []).append(measure())
    base = statistics.median(rates[runs[0][0]])
    report = {"threads": threads, "tokens": n, "decoding": loaded.decoding().name,
              "rates": {label: {"tokens_per_second": round(statistics.median(r), 1),
                                "runs": [round(x, 1) for x in r],
                                "x_transformers": round(statistics.median(r) / base, 2)}
                        for label, r in rates.items()}}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
