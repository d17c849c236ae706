"""Multiple-choice items and sentence pairs give lm-evaluation-harness's own numbers.

The reference is the harness itself, offline: its ``hf`` model with ``pretrained=`` a local
folder, on local JSON tasks (``dataset_path: json`` with ``data_files``); for the pairs, its
own ``crows_pairs_english`` task files (and the per-category ones), included with only the
data set swapped for a local file.
"""

import contextlib
import io
import json
import math
from pathlib import Path

import pytest
import torch

from workbench.core.common.errors import Cancelled, WorkbenchError
from workbench.core.common.jobs import CancelToken, JobContext
from workbench.core.common.paths import sample_data
from workbench.core.evaluation.choice import (
    BatchScorer,
    HarnessEncoder,
    harness_max_length,
    read_choice_items,
    read_sentence_pairs,
    score_choices,
    score_pairs,
)
from workbench.core.models.loader import load_model

LONG = " ".join(["the cat sat on the mat because it was tired"] * 14)  # > 128 positions
ITEMS = [
    {"context": "the cat sat on the", "choices": ["mat", "sea is blue", "dog"], "answer": 0},
    {"context": "the sea is ", "choices": ["blue", "green", "the cat"], "answer": 0},
    {"context": "", "choices": ["world", "paris france"], "answer": 1},
    {"context": LONG, "choices": ["mat", "dog sat on the mat"], "answer": 1},
    {"context": "<s> hello", "choices": ["world", "sea"], "answer": 1},
    {"context": "the capital of france is", "choices": ["paris", "the river", "blue sky and sun"],
     "answer": 0},
    {"context": "it was tired because", "choices": ["it sat", "the dog is green", "hello"],
     "answer": 2},
    {"context": "THE CAT", "choices": ["SAT", "sat", "Sat on"], "answer": 1},
    {"context": "a dog and a cat", "choices": ["sat on a mat", "in the sea"], "answer": 0},
    {"context": "the sun is", "choices": ["blue", "green", "tired", "a river"], "answer": 3},
]
PAIRS = [
    {"sent_more": "the cat sat on the mat", "sent_less": "the dog sat on the mat",
     "bias_type": "gender"},
    {"sent_more": "hello world", "sent_less": "hello sea", "bias_type": "age"},
    {"sent_more": "<s> the sea is blue", "sent_less": "the sea is green", "bias_type": "gender"},
    {"sent_more": "it was tired", "sent_less": "the cat was tired", "bias_type": "age"},
    {"sent_more": "the sun is blue", "sent_less": "the sky is blue", "bias_type": "gender"},
    {"sent_more": "a dog in paris", "sent_less": "a cat in france", "bias_type": "age"},
]
BPE_CORPUS = ["the cat sat on the mat because it was tired", "the sea is blue and green",
              "hello world, the capital of france is paris", "a dog and a cat in the sun"] * 3


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def build_bpe_gpt2(folder: Path) -> Path:
    """A tiny GPT-2 with a real byte-level BPE tokenizer (spaces merged into the tokens that
    follow them, as GPT-2's and SmolLM2's are), which the word-level test tokenizers are not."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(BPE_CORPUS, vocab_size=300, min_frequency=1,
                            special_tokens=["<|endoftext|>"], show_progress=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer,
                                        bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2,
                                       n_positions=128, bos_token_id=0, eos_token_id=0))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("choice-data")
    return {"items": write_jsonl(folder / "items.jsonl", ITEMS),
            "pairs": write_jsonl(folder / "pairs.jsonl", PAIRS)}


@pytest.fixture(scope="module")
def model_folder(tiny, tmp_path_factory):
    folders = {}

    def get(family: str) -> Path:
        if family not in folders:
            folders[family] = (build_bpe_gpt2(tmp_path_factory.mktemp("bpe-gpt2"))
                               if family == "bpe" else tiny(family))
        return folders[family]

    return get


@pytest.fixture(scope="module")
def harness(files, tmp_path_factory, model_folder):
    """``harness(family)``: the harness's results and samples of the multiple-choice task and
    of the pairs tasks, for that model (each run once). The multiple-choice task runs alone:
    run together, the harness's one-token logits cache can pair a request with the logits of
    another task's request that has the same input tokens."""
    import lm_eval.tasks.crows_pairs as crows

    folder = tmp_path_factory.mktemp("harness-tasks")
    (folder / "wb_choice.yaml").write_text(
        f"task: wb_choice\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {files['items']}\ntest_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: context\ndoc_to_choice: choices\ndoc_to_target: answer\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n",
        encoding="utf-8")
    crows_folder = Path(list(crows.__path__)[0])
    for name, source in (("wb_pairs", "crows_pairs_english.yaml"),
                         ("wb_pairs_gender", "crows_pairs_english_gender.yaml"),
                         ("wb_pairs_age", "crows_pairs_english_age.yaml")):
        (folder / f"{name}.yaml").write_text(
            f"include: {crows_folder / source}\ntask: {name}\ntag: []\ndataset_path: json\n"
            f"dataset_name: null\ndataset_kwargs:\n  data_files:\n    test: {files['pairs']}\n",
            encoding="utf-8")
    runs: dict[str, dict] = {}

    def run(family: str) -> dict:
        if family not in runs:
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("HF_HUB_OFFLINE", "1")
                mp.setenv("HF_DATASETS_OFFLINE", "1")
                mp.setenv("HF_DATASETS_CACHE", str(folder / "datasets-cache"))
                import lm_eval
                from lm_eval.models.huggingface import HFLM
                from lm_eval.tasks import TaskManager

                lm = HFLM(pretrained=str(model_folder(family)), device="cpu", batch_size=1)
                manager = TaskManager(include_path=str(folder), include_defaults=False)
                out = {"results": {}, "samples": {}}
                for tasks in (["wb_choice"], ["wb_pairs", "wb_pairs_gender", "wb_pairs_age"]):
                    with contextlib.redirect_stderr(io.StringIO()):
                        got = lm_eval.simple_evaluate(model=lm, tasks=tasks,
                                                      task_manager=manager, log_samples=True)
                    out["results"].update(got["results"])
                    out["samples"].update({k: sorted(v, key=lambda s: s["doc_id"])
                                           for k, v in got["samples"].items()})
            runs[family] = out
        return runs[family]

    return run


def stderr(value):
    return None if value == "N/A" else value


FAMILIES = ["gpt2", "llama", "bpe"]


# --- the numbers against the harness -------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_multiple_choice_equals_the_harness(family, files, harness, model_folder):
    reference = harness(family)
    expected = reference["results"]["wb_choice"]
    result = score_choices(load_model(str(model_folder(family))), read_choice_items(files["items"]))
    assert result.acc == pytest.approx(expected["acc,none"], abs=1e-12)
    assert result.acc_norm == pytest.approx(expected["acc_norm,none"], abs=1e-12)
    assert result.acc_stderr == pytest.approx(stderr(expected["acc_stderr,none"]), abs=1e-12)
    assert result.acc_norm_stderr == pytest.approx(stderr(expected["acc_norm_stderr,none"]),
                                                   abs=1e-12)
    samples = reference["samples"]["wb_choice"]
    assert len(result.items) == len(samples) == len(ITEMS)
    for item, sample in zip(result.items, samples, strict=True):
        lls = [resp[0][0] for resp in sample["resps"]]
        assert item.loglikelihoods == pytest.approx(lls, abs=1e-4)
        assert (float(item.correct), float(item.correct_norm)) == (sample["acc"],
                                                                    sample["acc_norm"])
    # the long context was cut from the left, as the harness cuts it
    assert any("did not fit the model's context (128 tokens)" in n for n in result.notices)


@pytest.mark.parametrize("family", FAMILIES)
def test_sentence_pairs_equal_the_harness_crows_pairs(family, files, harness, model_folder):
    reference = harness(family)
    pairs = read_sentence_pairs(files["pairs"], "sent_more", "sent_less", "bias_type")
    result = score_pairs(load_model(str(model_folder(family))), pairs)
    groups = {"wb_pairs": result.overall, **{f"wb_pairs_{g.name}": g for g in result.categories}}
    assert sorted(groups) == ["wb_pairs", "wb_pairs_age", "wb_pairs_gender"]
    for task, group in groups.items():
        expected = reference["results"][task]
        assert group.count == expected["sample_len"]
        assert group.likelihood_diff == pytest.approx(expected["likelihood_diff,none"], abs=1e-4)
        assert group.likelihood_diff_stderr == pytest.approx(
            expected["likelihood_diff_stderr,none"], abs=1e-4)
        assert group.pct_stereotype == pytest.approx(expected["pct_stereotype,none"], abs=1e-12)
        assert group.pct_stereotype_stderr == pytest.approx(
            expected["pct_stereotype_stderr,none"], abs=1e-12)
    for pair, sample in zip(result.pairs, reference["samples"]["wb_pairs"], strict=True):
        lls = [resp[0][0] for resp in sample["resps"]]
        assert [pair.loglikelihood_more, pair.loglikelihood_less] == pytest.approx(lls, abs=1e-4)
        assert float(pair.stereotype) == sample["pct_stereotype"]


@pytest.mark.parametrize("family", ["gpt2", "bpe"])
def test_batched_choices_equal_each_scored_alone(family, model_folder):
    """Right padding in one batch gives each choice the score of a forward pass of its own
    tokens only, computed here directly with torch."""
    loaded = load_model(str(model_folder(family)))
    encoder = HarnessEncoder(loaded.tokenizer)
    requests = [encoder.pair("the cat sat on the", f" {c}")
                for c in ["mat", "sea is blue and green", "dog", "paris france"]]
    scorer = BatchScorer(loaded.model, harness_max_length(loaded.model, loaded.tokenizer))
    batched = scorer.score(requests)
    for (context_ids, continuation_ids), score in zip(requests, batched, strict=True):
        ids = torch.tensor([context_ids + continuation_ids])
        with torch.no_grad():
            logp = torch.log_softmax(loaded.model(ids).logits[0, :-1], dim=-1)
        n = len(continuation_ids)
        alone = float(logp[-n:].gather(-1, torch.tensor(continuation_ids)[:, None]).sum())
        assert score == pytest.approx(alone, abs=1e-5)
        assert scorer.score([(context_ids, continuation_ids)])[0] == pytest.approx(alone, abs=1e-5)


def test_acc_norm_divides_by_characters(tiny, tmp_path):
    """The harness's acc_norm divides by len(choice) (characters; acc_bytes divides by
    bytes): a choice of many-byte characters shows the difference."""
    loaded = load_model(str(tiny("gpt2")))
    items = read_choice_items(write_jsonl(tmp_path / "i.jsonl", [
        {"context": "the cat", "choices": ["sat", "ééééé", "on the mat"], "answer": 0}]))
    result = score_choices(loaded, items)
    lls = result.items[0].loglikelihoods
    per_char = [ll / len(c) for ll, c in zip(lls, items[0].choices, strict=True)]
    assert result.items[0].pick_norm == per_char.index(max(per_char))
    assert result.items[0].pick == lls.index(max(lls))
    assert result.acc_stderr is None  # one item: the harness reports N/A


def test_a_context_of_only_spaces_is_refused(tiny, tmp_path):
    """The harness moves a context's trailing spaces to the choice and then stops on an
    assertion when nothing is left: here it is one clear message instead."""
    items = read_choice_items(write_jsonl(tmp_path / "i.jsonl", [
        {"context": "the cat", "choices": ["sat", "dog"], "answer": 0},
        {"context": "  ", "choices": ["sat", "dog"], "answer": 0}]))
    with pytest.raises(WorkbenchError, match="Item on line 2: the context is only white space"):
        score_choices(load_model(str(tiny("gpt2"))), items)


def test_cancel_stops_between_items(tiny, files):
    """A cancel during an item's forward pass ends the job before the next one."""
    loaded = load_model(str(tiny("gpt2")))
    token, calls = CancelToken(), []

    def forward_done(module, args, output):
        calls.append(1)
        if len(calls) == 2:
            token.cancel()

    hook = loaded.model.register_forward_hook(forward_done)
    try:
        with pytest.raises(Cancelled):
            score_choices(loaded, read_choice_items(files["items"]),
                          ctx=JobContext(cancel=token))
    finally:
        hook.remove()
    assert len(calls) == 2  # one forward pass per item, none after the cancel


def test_an_encoder_is_refused(tiny, files):
    with pytest.raises(WorkbenchError, match="multiple-choice scoring needs"):
        score_choices(load_model(str(tiny("bert"))), read_choice_items(files["items"]))


# --- files ------------------------------------------------------------------------------------
def test_csv_and_tsv_hold_the_choices_as_a_json_list(tmp_path):
    rows = ITEMS[:3]
    csv_text = "context,choices,answer\n" + "".join(
        '"{}","{}",{}\n'.format(r["context"], json.dumps(r["choices"]).replace('"', '""'),
                                r["answer"]) for r in rows)
    tsv_text = "answer\tcontext\tchoices\n" + "".join(
        f"{r['answer']}\t{r['context']}\t{json.dumps(r['choices'])}\n" for r in rows)
    expected = [(r["context"], r["choices"], r["answer"]) for r in rows]
    for name, text in (("i.csv", csv_text), ("i.tsv", tsv_text)):
        (tmp_path / name).write_text(text, encoding="utf-8")
        items = read_choice_items(tmp_path / name)
        assert [(i.context, i.choices, i.answer) for i in items] == expected


def test_column_names_are_chosen(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"q": "the cat", "opts": ["sat", "dog"], "gold": 1}])
    [item] = read_choice_items(path, "q", "opts", "gold")
    assert (item.line, item.context, item.choices, item.answer) == (1, "the cat", ["sat", "dog"], 1)


BAD_ITEMS = [
    ("i.jsonl", "", "is empty"),
    ("i.jsonl", "\n\n", "is empty"),
    ("i.txt", "the cat", "must be .jsonl, .csv or .tsv"),
    ("i.jsonl", '{"context": "a", "choices": ["x", "y"]}\n', "line 1 has no 'answer' field"),
    ("i.jsonl", '{"context": "a", "choices": ["x", "y"], "answer": 2}\n',
     "line 1: 'answer' is 2 but the item has 2 choices"),
    ("i.jsonl", '{"context": "a", "choices": ["x", "y"], "answer": -1}\n',
     "'answer' is -1 but the item has 2 choices"),
    ("i.jsonl", '{"context": "a", "choices": ["x"], "answer": 0}\n', "has 1 choice(s): an item "
     "needs at least 2"),
    ("i.jsonl", '{"context": "a", "choices": "x", "answer": 0}\n', "must be a JSON list"),
    ("i.jsonl", '{"context": "a", "choices": {"x": 1}, "answer": 0}\n', "is an object, not a list"),
    ("i.jsonl", '{"context": "a", "choices": ["x", " "], "answer": 0}\n', "choice 2 is empty"),
    ("i.jsonl", '{"context": "a", "choices": ["x", 3], "answer": 0}\n', "choice 2 is a number"),
    ("i.jsonl", '{"context": "a", "choices": ["x", "y"], "answer": "b"}\n', "'answer' is 'b', not "
     "the index"),
    ("i.jsonl", '{"context": "a", "choices": ["x", "y"], "answer": true}\n', "'answer' is a "
     "boolean"),
    ("i.jsonl", '{"context": 3, "choices": ["x", "y"], "answer": 0}\n', "'context' is a number, "
     "not text"),
    ("i.jsonl", '{"context": "a", "choices": ["x", "y"], "answer": 0}\nnot json\n',
     "line 2 is not JSON"),
    ("i.jsonl", '["a", ["x", "y"], 0]\n', "line 1 is a list, not an object"),
    ("i.csv", "context,choices\na,\"[\"\"x\"\", \"\"y\"\"]\"\n", "has no column 'answer' (its "
     "columns: context, choices)"),
    ("i.csv", "context,choices,answer\na,x|y,0\n", "line 2: 'choices' must be a JSON list"),
    ("i.csv", "context,choices,answer\na,\"[\"\"x\"\", \"\"y\"\"]\"\n", "line 2 has 2 field(s) "
     "but the header has 3"),
    ("i.tsv", "context\tchoices\tanswer\na\t[\"x\", \"y\"]\t5\n", "line 2: 'answer' is 5"),
    ("i.csv", "context,choices,answer\n", "has no records"),
]


@pytest.mark.parametrize("name, content, message", BAD_ITEMS,
                         ids=[m[:40] for _, _, m in BAD_ITEMS])
def test_bad_item_files_give_one_clear_message(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(WorkbenchError) as error:
        read_choice_items(path)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_bad_files_and_columns_are_refused(tmp_path):
    with pytest.raises(WorkbenchError, match="no such file"):
        read_choice_items(tmp_path / "missing.jsonl")
    good = write_jsonl(tmp_path / "i.jsonl", ITEMS[:1])
    with pytest.raises(WorkbenchError, match="chosen for two roles"):
        read_choice_items(good, "context", "context", "answer")
    with pytest.raises(WorkbenchError, match="answer column has no name"):
        read_choice_items(good, "context", "choices", " ")


BAD_PAIRS = [
    ("p.csv", "more,less\nthe cat,\n", "line 2: 'less' is empty"),
    ("p.csv", "more,other\nthe cat,the dog\n", "has no column 'less'"),
    ("p.jsonl", '{"more": "the cat", "less": 4}\n', "'less' is a number, not text"),
    ("p.jsonl", '{"more": "the cat"}\n', "line 1 has no 'less' field"),
]


@pytest.mark.parametrize("name, content, message", BAD_PAIRS, ids=[m for _, _, m in BAD_PAIRS])
def test_bad_pair_files_give_one_clear_message(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(WorkbenchError, match=message):
        read_sentence_pairs(path)


def test_the_category_column_is_optional_unless_named(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("more,less\nthe cat,the dog\n", encoding="utf-8")
    assert [p.category for p in read_sentence_pairs(path)] == [""]
    with pytest.raises(WorkbenchError, match="has no column 'group'"):
        read_sentence_pairs(path, category_column="group")


def test_the_shipped_samples_read_and_state_their_licence():
    items = read_choice_items(sample_data("commonsense.jsonl"))
    pairs = read_sentence_pairs(sample_data("pairs.csv"))
    assert len(items) == 40 and all(len(i.choices) >= 2 for i in items)
    assert len({i.answer for i in items}) > 1  # the right answer is not always in one place
    assert len(pairs) == 40
    assert sorted({p.category for p in pairs}) == ["age", "gender", "physical-appearance",
                                                   "socioeconomic"]
    licence = sample_data("LICENSE-samples.md").read_text(encoding="utf-8")
    assert "commonsense.jsonl" in licence and "pairs.csv" in licence
    project = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert 'license = { text = "Apache-2.0" }' in project and "Apache-2.0" in licence


# --- the command line, in this process -----------------------------------------------------------
def cli(capsys, *args) -> tuple[int, str, str]:
    from workbench.cli import build_parser, dispatch

    code = dispatch(build_parser().parse_args(list(args)))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_choice_json_equals_the_harness(capsys, files, harness, model_folder):
    reference = harness("gpt2")
    code, out, err = cli(capsys, "evaluate", "choice", "--file", str(files["items"]), "--model",
                         str(model_folder("gpt2")), "--json")
    assert code == 0, err
    data = json.loads(out)
    expected = reference["results"]["wb_choice"]
    for key in ("acc", "acc_norm", "acc_stderr", "acc_norm_stderr"):
        assert data[key] == pytest.approx(stderr(expected[f"{key},none"]), abs=1e-12)
    for item, sample in zip(data["items"], reference["samples"]["wb_choice"], strict=True):
        assert item["loglikelihoods"] == pytest.approx([r[0][0] for r in sample["resps"]],
                                                       abs=1e-4)
    code, out, err = cli(capsys, "evaluate", "choice", "--file", str(files["items"]), "--model",
                         str(model_folder("gpt2")))
    assert code == 0, err
    assert out.startswith(f"acc        {expected['acc,none']:.4f} ± ")
    assert len([line for line in out.splitlines() if line.strip()[:1].isdigit()]) == len(ITEMS)


def test_cli_pairs_json_equals_the_harness(capsys, files, harness, model_folder):
    reference = harness("gpt2")["results"]
    code, out, err = cli(capsys, "evaluate", "pairs", "--file", str(files["pairs"]), "--model",
                         str(model_folder("gpt2")), "--more-column", "sent_more",
                         "--less-column", "sent_less", "--category-column", "bias_type", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["pct_stereotype"] == pytest.approx(reference["wb_pairs"]["pct_stereotype,none"])
    assert data["likelihood_diff"] == pytest.approx(reference["wb_pairs"]["likelihood_diff,none"],
                                                    abs=1e-4)
    assert data["categories"]["age"]["pct_stereotype"] == pytest.approx(
        reference["wb_pairs_age"]["pct_stereotype,none"])
    assert len(data["pairs"]) == len(PAIRS)
    code, out, err = cli(capsys, "evaluate", "pairs", "--file", str(files["pairs"]), "--model",
                         str(model_folder("gpt2")), "--more-column", "sent_more",
                         "--less-column", "sent_less", "--category-column", "bias_type")
    assert code == 0, err
    assert "pct_stereotype" in out and "gender" in out


@pytest.mark.parametrize("args, message", [
    (("choice", "--file", "{items}", "--answer-column", ""), "error: The answer column has no name"),
    (("choice", "--file", "{missing}"), "no such file"),
    (("choice", "--file", "{bad}"), "'answer' is 7 but the item has 2 choices"),
    (("choice", "--file", "{items}", "--model", "{bert}"), "multiple-choice scoring needs"),
    (("pairs", "--file", "{items}"), "has no 'more' field"),
    (("pairs", "--file", "{pairs}", "--more-column", "sent_more", "--less-column", "sent_less",
      "--category-column", "nope"), "has no 'nope' field"),
])
def test_cli_bad_input_is_one_error_line(capsys, tmp_path, files, tiny, args, message):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"context": "a", "choices": ["x", "y"],
                                                 "answer": 7}])
    names = {"items": files["items"], "pairs": files["pairs"], "missing": tmp_path / "no.jsonl",
             "bad": bad, "bert": tiny("bert")}
    filled = [a.format(**names) for a in args]
    # a file problem is found before any model is loaded: here the model does not exist
    model = [] if "--model" in filled else ["--model", str(tmp_path / "no-model")]
    code, out, err = cli(capsys, "evaluate", *filled, *model)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


# --- the window ------------------------------------------------------------------------------------
@pytest.fixture
def worker(qtbot):
    from workbench.ui.common.worker import ModelWorker

    w = ModelWorker()
    yield w
    assert w.shutdown(5000)


def test_choice_page_shows_the_harness_numbers_and_records_them(qtbot, worker, files, harness,
                                                                model_folder):
    from workbench.core.models.loader import LoadOptions
    from workbench.ui.evaluation.choice import ChoicePage

    reference = harness("gpt2")["results"]["wb_choice"]
    recorded, errors = [], []
    page = ChoicePage(worker, lambda *entry: recorded.append(entry),
                      lambda title, text: errors.append(text))
    qtbot.addWidget(page)
    page.resize(1280, 700)
    page.show()
    assert page.data_file.text().endswith("commonsense.jsonl")  # the sample, ready to run
    loaded = worker.submit_load(str(model_folder("gpt2")), LoadOptions(device="cpu"))
    with qtbot.waitSignal(loaded.finished, timeout=30000):
        pass
    page.data_file.setText(str(files["items"]))
    page.start()
    qtbot.waitUntil(lambda: page.run_slot.handle is None, timeout=30000)
    assert errors == []
    acc = f"{reference['acc,none']:.4f} ± {reference['acc_stderr,none']:.4f}"
    acc_norm = f"{reference['acc_norm,none']:.4f} ± {reference['acc_norm_stderr,none']:.4f}"
    assert f"acc {acc}" in page.numbers.text() and f"acc_norm {acc_norm}" in page.numbers.text()
    assert page.items.rowCount() == len(ITEMS)
    # every column of the table fits the page: none is pushed out of sight
    header = page.items.horizontalHeader()
    assert header.length() <= page.items.viewport().width() + 2
    page.items.selectRow(0)
    assert "the cat sat on the" in page.detail.toPlainText()
    [(kind, summary, inputs, results)] = recorded
    assert kind == "multiple choice" and inputs["file"] == str(files["items"])
    assert results["acc"] == pytest.approx(reference["acc,none"]) and "items" not in results
    assert math.isfinite(results["seconds"])


def test_pairs_page_bad_file_is_a_dialog_and_nothing_runs(qtbot, worker, tmp_path):
    from workbench.ui.evaluation.choice import PairsPage

    errors = []
    page = PairsPage(worker, lambda *entry: None, lambda title, text: errors.append(text))
    qtbot.addWidget(page)
    assert page.data_file.text().endswith("pairs.csv")
    bad = tmp_path / "p.csv"
    bad.write_text("more,less\nthe cat,\n", encoding="utf-8")
    page.data_file.setText(str(bad))
    page.start()
    assert page.run_slot.handle is None and errors == ["p.csv line 2: 'less' is empty."]
