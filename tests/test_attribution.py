"""Input attribution: the numbers are captum's own, called directly here on the same tiny
model, inputs, baseline and steps (or the published definition, computed here)."""

import csv
import io
import json
import math

import pytest
import torch
from captum.attr import (
    FeatureAblation,
    IntegratedGradients,
    LayerGradientXActivation,
    LayerIntegratedGradients,
    LLMAttribution,
    LLMGradientAttribution,
    Saliency,
    TextTokenInput,
)

from workbench.cli import attribute as attribute_cli
from workbench.cli import dispatch
from workbench.cli.common import OneLineParser
from workbench.core.common.errors import Cancelled, WorkbenchError
from workbench.core.common.jobs import CancelToken, JobContext, Progress
from workbench.core.interpret.attribution import attribute
from workbench.core.interpret.attribution_classifier import attribute_classifier
from workbench.core.interpret.attribution_export import csv_text, export_csv, export_html, html_text
from workbench.core.models.loader import load_model

PROMPT = "the cat sat on the"
TARGET = "mat because"
STEPS = 16


@pytest.fixture
def llama(tiny):
    return load_model(str(tiny("llama")))


@pytest.fixture
def classifier(tiny, tmp_path):
    """The tiny BERT classifier with a sharper head: its random one gives every text the
    same probabilities to 1e-6, which leaves nothing to attribute."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = tmp_path / "classifier"
    model = AutoModelForSequenceClassification.from_pretrained(tiny("bert-classifier"))
    with torch.no_grad():
        model.bert.pooler.dense.weight.mul_(8.0)
        model.classifier.weight.mul_(60.0)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny("bert-classifier")).save_pretrained(folder)
    return load_model(str(folder))


def ids_of(loaded, text):
    return loaded.tokenizer(text)["input_ids"]


def target_ids(loaded, text=TARGET):
    return loaded.tokenizer.encode(text, add_special_tokens=False)


def logprob(model, ids, targets):
    """log p(targets | ids) by one plain forward pass: the published definition."""
    with torch.no_grad():
        logp = model(torch.tensor([list(ids) + list(targets)])).logits[0].log_softmax(-1)
    return sum(float(logp[len(ids) - 1 + k, t]) for k, t in enumerate(targets))


def captum_delta(loaded, prompt, targets, steps):
    """captum's own convergence delta of its LLM integrated gradients (pad baseline): the
    layer method that ``LLMGradientAttribution`` wraps, run for each target token as it
    runs it, with ``return_convergence_delta``."""
    model, tok = loaded.model, loaded.tokenizer
    llm = LLMGradientAttribution(LayerIntegratedGradients(model, model.get_input_embeddings()),
                                 tok)
    inp = TextTokenInput(prompt, tok, baselines=tok.pad_token_id)
    total = 0.0
    for k in range(len(targets)):
        _, delta = llm.attr_method.attribute(
            inp.to_tensor(), additional_forward_args=(inp, torch.tensor(targets), k),
            n_steps=steps, return_convergence_delta=True)
        total += float(delta.sum())
    return total


def close(values, reference, tol=1e-5):
    reference = torch.as_tensor(reference, dtype=torch.float64).flatten().tolist()
    values = [v for row in values for v in (row if isinstance(row, list) else [row])]
    assert len(values) == len(reference)
    for got, want in zip(values, reference, strict=True):
        assert got == pytest.approx(want, rel=tol, abs=1e-7)


# --- the four methods on a continuation, against captum called directly -----------------------------
def test_integrated_gradients_are_captums_and_complete(llama):
    model, tok = llama.model, llama.tokenizer
    result = attribute(llama, PROMPT, TARGET, method="ig", steps=STEPS, baseline="pad")
    reference = LLMGradientAttribution(
        LayerIntegratedGradients(model, model.get_input_embeddings()), tok).attribute(
        TextTokenInput(PROMPT, tok, baselines=tok.pad_token_id), target=TARGET, n_steps=STEPS)
    close(result.scores, reference.seq_attr)
    close(result.rows, reference.token_attr)
    assert result.tokens == [tok.decode([i]) for i in ids_of(llama, PROMPT)]
    assert result.outputs == ["mat", "because"]
    assert (result.method, result.baseline, result.baseline_id, result.steps) == \
        ("ig", "pad", tok.pad_token_id, STEPS)
    # completeness: the scores sum to the change of log p(target) from the all-pad prompt
    ids, outs = ids_of(llama, PROMPT), target_ids(llama)
    change = logprob(model, ids, outs) - logprob(model, [tok.pad_token_id] * len(ids), outs)
    assert result.target_logprob == pytest.approx(logprob(model, ids, outs), abs=1e-5)
    assert result.delta == pytest.approx(sum(result.scores) - change, abs=1e-5)
    assert abs(result.delta) < 1e-3 and not result.notices
    assert result.delta == pytest.approx(captum_delta(llama, PROMPT, outs, STEPS), abs=1e-5)


def test_input_x_gradient_is_captums(llama):
    model, tok = llama.model, llama.tokenizer
    result = attribute(llama, PROMPT, TARGET, method="ixg")
    reference = LLMGradientAttribution(
        LayerGradientXActivation(model, model.get_input_embeddings()), tok).attribute(
        TextTokenInput(PROMPT, tok), target=TARGET)
    close(result.scores, reference.seq_attr)
    close(result.rows, reference.token_attr)
    assert (result.baseline, result.steps, result.delta) == (None, None, None)


def test_saliency_is_captums_absolute_gradient(llama):
    model = llama.model
    result = attribute(llama, PROMPT, TARGET, method="saliency")
    ids, outs = ids_of(llama, PROMPT), target_ids(llama)
    rows = []
    for k, token in enumerate(outs):  # each target token after the prompt and those before it
        embeds = model.get_input_embeddings()(torch.tensor([ids + outs[:k]])).detach().requires_grad_()
        grads = Saliency(lambda e: model(inputs_embeds=e).logits[:, -1].log_softmax(-1)
                         ).attribute(embeds, target=token, abs=True)
        rows.append(grads[0, :len(ids)].sum(-1))
    close(result.rows, torch.stack(rows))
    close(result.scores, torch.stack(rows).sum(0))
    assert all(v >= 0 for v in result.scores)


def test_feature_ablation_is_captums_and_the_drop_in_log_probability(llama):
    model, tok = llama.model, llama.tokenizer
    result = attribute(llama, PROMPT, TARGET, method="ablation", baseline="eos")
    reference = LLMAttribution(FeatureAblation(model), tok).attribute(
        TextTokenInput(PROMPT, tok, baselines=tok.eos_token_id), target=TARGET,
        forward_in_tokens=False)
    close(result.scores, reference.seq_attr)
    close(result.rows, reference.token_attr)
    # the definition: log p(target) minus log p(target) with that one token replaced
    ids, outs = ids_of(llama, PROMPT), target_ids(llama)
    for j in range(len(ids)):
        ablated = ids[:j] + [tok.eos_token_id] + ids[j + 1:]
        drop = logprob(model, ids, outs) - logprob(model, ablated, outs)
        assert result.scores[j] == pytest.approx(drop, abs=1e-5)
    assert (result.baseline, result.baseline_id) == ("eos", tok.eos_token_id)


def test_a_token_id_baseline_and_a_zero_embedding(llama):
    model, tok = llama.model, llama.tokenizer
    by_id = attribute(llama, PROMPT, TARGET, method="ig", steps=STEPS, baseline="17")
    reference = LLMGradientAttribution(
        LayerIntegratedGradients(model, model.get_input_embeddings()), tok).attribute(
        TextTokenInput(PROMPT, tok, baselines=17), target=TARGET, n_steps=STEPS)
    close(by_id.scores, reference.seq_attr)
    assert (by_id.baseline, by_id.baseline_id) == ("17", 17)
    # zero: integrated gradients in embedding space from zero vectors at the prompt
    zero = attribute(llama, PROMPT, TARGET, method="ig", steps=STEPS, baseline="zero")
    ids, outs = ids_of(llama, PROMPT), target_ids(llama)
    rows, deltas = [], []
    for k, token in enumerate(outs):
        embeds = model.get_input_embeddings()(torch.tensor([ids + outs[:k]])).detach()
        start = embeds.clone()
        start[:, :len(ids)] = 0
        attr, delta = IntegratedGradients(
            lambda e: model(inputs_embeds=e).logits[:, -1].log_softmax(-1)).attribute(
            embeds, baselines=start, target=token, n_steps=STEPS, return_convergence_delta=True)
        rows.append(attr[0, :len(ids)].sum(-1))
        deltas.append(float(delta))
    close(zero.rows, torch.stack(rows))
    assert zero.delta == pytest.approx(sum(deltas), abs=1e-5)
    assert zero.baseline_text == "zero embedding"


# --- a generated sequence: the tokens × tokens matrix -------------------------------------------------
def test_each_generated_token_is_attributed_to_everything_before_it(llama):
    model, tok = llama.model, llama.tokenizer
    words = ["mat", "because", "it"]
    outputs = [tok.convert_tokens_to_ids(w) for w in words]
    result = attribute(llama, PROMPT, outputs, method="ig", steps=STEPS)
    n = len(ids_of(llama, PROMPT))
    assert result.kind == "generated" and result.outputs == words
    assert result.tokens == PROMPT.split() + words[:-1]  # the last one comes before nothing
    llm = LLMGradientAttribution(LayerIntegratedGradients(model, model.get_input_embeddings()),
                                 tok)
    for k, word in enumerate(words):
        context = " ".join(PROMPT.split() + words[:k])
        reference = llm.attribute(TextTokenInput(context, tok, baselines=tok.pad_token_id),
                                  target=word, n_steps=STEPS)
        close(result.rows[k][:n + k], reference.token_attr)
        assert result.rows[k][n + k:] == [None] * (len(words) - 1 - k)
        ids = ids_of(llama, context)
        change = logprob(model, ids, [outputs[k]]) - \
            logprob(model, [tok.pad_token_id] * len(ids), [outputs[k]])
        assert result.row_deltas[k] == pytest.approx(sum(result.rows[k][:n + k]) - change,
                                                     abs=1e-5)
    for j in range(len(result.tokens)):
        assert result.scores[j] == pytest.approx(
            sum(r[j] for r in result.rows if r[j] is not None), abs=1e-6)
    assert result.delta == pytest.approx(sum(result.row_deltas), abs=1e-9)
    # "why this token?": the last row alone is the same row
    last = attribute(llama, PROMPT, outputs, method="ig", steps=STEPS, only_last=True)
    assert len(last.rows) == 1 and last.outputs == ["it"]
    close(last.rows[0], result.rows[-1])


def test_max_new_tokens_attributes_the_greedy_continuation(llama):
    model = llama.model
    ids = ids_of(llama, PROMPT)
    with torch.no_grad():
        greedy = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids)),
                                max_new_tokens=3, do_sample=False,
                                pad_token_id=llama.tokenizer.pad_token_id)[0, len(ids):]
    result = attribute(llama, PROMPT, max_new_tokens=3, method="ablation")
    assert result.output_ids == greedy.tolist()
    assert len(result.rows) == 3


# --- a classifier ---------------------------------------------------------------------------------------
def test_classifier_integrated_gradients_are_captums(classifier):
    model, tok = classifier.model, classifier.tokenizer
    text = "the cat sat on the mat"
    result = attribute_classifier(classifier, text, None, method="ig", steps=STEPS)
    ids = torch.tensor([ids_of(classifier, text)])
    with torch.no_grad():
        predicted = int(model(ids).logits.argmax(-1))
    assert result.target == model.config.id2label[predicted]
    # captum's BERT tutorial: [CLS] and [SEP] kept, every other token a [PAD] in the baseline
    base = torch.full_like(ids, tok.pad_token_id)
    base[0, 0], base[0, -1] = ids[0, 0], ids[0, -1]
    attr, delta = LayerIntegratedGradients(
        lambda x: model(x).logits.log_softmax(-1), model.get_input_embeddings()).attribute(
        ids, baselines=base, target=predicted, n_steps=STEPS, return_convergence_delta=True)
    close(result.scores, attr.sum(-1)[0, 1:-1])
    assert result.tokens == text.split() and result.positions == list(range(1, 7))
    assert result.delta == pytest.approx(float(delta), abs=1e-6)
    assert max(abs(s) for s in result.scores) > 1e-3  # something to attribute


def test_classifier_ablation_and_a_chosen_label(classifier):
    model, tok = classifier.model, classifier.tokenizer
    text = "the dog was tired"
    label = model.config.id2label[0]
    result = attribute_classifier(classifier, text, label, method="ablation")
    ids = ids_of(classifier, text)

    def logp(sequence):
        with torch.no_grad():
            return float(model(torch.tensor([sequence])).logits.log_softmax(-1)[0, 0])

    for j, position in enumerate(result.positions):
        ablated = ids[:position] + [tok.pad_token_id] + ids[position + 1:]
        assert result.scores[j] == pytest.approx(logp(ids) - logp(ablated), abs=1e-5)
    assert result.outputs == [label] and result.target_logprob == pytest.approx(logp(ids))


# --- the model is shared: left as it was; cancel ------------------------------------------------------
def test_the_model_is_left_as_it_was(llama):
    model = llama.model
    model.train()  # a state the job must not keep
    attention = model.config._attn_implementation
    attribute(llama, PROMPT, TARGET, method="ig", steps=4, baseline="zero")
    attribute(llama, PROMPT, TARGET, method="saliency")
    assert model.training and model.config._attn_implementation == attention
    assert not model.base_model._forward_pre_hooks and not model._forward_pre_hooks
    assert not model.get_input_embeddings()._forward_hooks
    assert all(p.grad is None for p in model.parameters())


def test_cancel_takes_effect_at_the_next_model_call(llama):
    cancel, seen = CancelToken(), []

    def on_event(event):
        if isinstance(event, Progress) and event.fraction:
            seen.append(event)
            cancel.cancel()

    llama.model.eval()
    with pytest.raises(Cancelled):
        attribute(llama, PROMPT, TARGET, method="ablation",
                  ctx=JobContext(cancel=cancel, emit=on_event))
    assert len(seen) == 1  # one model call, then the cancel
    assert not llama.model.base_model._forward_pre_hooks and not llama.model.training


# --- bad input: one clear error ------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt="  "), "The prompt is empty."),
    (dict(steps=0), "The number of steps must be between 1 and 1000, not 0."),
    (dict(steps=1001), "The number of steps must be between 1 and 1000, not 1001."),
    (dict(method="shap"), "Unknown attribution method 'shap'"),
    (dict(baseline="unk"), "Unknown baseline 'unk'"),
    (dict(baseline=80), "does not exist"),
    (dict(baseline=-3), "The baseline token id must be 0 or more, not -3."),
    (dict(target=""), "The target is empty"),
    (dict(max_new_tokens=2), "not both or neither"),
    (dict(target=None, max_new_tokens=0), "Max new tokens must be at least 1, not 0."),
])
def test_bad_input_is_one_clear_error(llama, kwargs, message):
    args = dict(prompt=PROMPT, target=TARGET, method="ig", steps=4) | kwargs
    with pytest.raises(WorkbenchError) as error:
        attribute(llama, **args)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_model_of_the_wrong_kind_is_refused(llama, classifier):
    with pytest.raises(WorkbenchError, match="attribution of a continuation needs a causal"):
        attribute(classifier, PROMPT, TARGET)
    with pytest.raises(WorkbenchError, match="classifier attribution needs a model fine-tuned"):
        attribute_classifier(llama, PROMPT)
    with pytest.raises(WorkbenchError, match="'happy' is not a label"):
        attribute_classifier(classifier, PROMPT, "happy")


# --- the command line, in this process ----------------------------------------------------------------
def run_cli(argv, capsys):
    parser = OneLineParser(prog="python main.py")
    attribute_cli.add_parsers(parser.add_subparsers(dest="command", parser_class=OneLineParser))
    try:
        code = dispatch(parser.parse_args(argv), attribute_cli.COMMANDS[("attribute", None)])
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_prints_tokens_scores_delta_and_what_was_used(llama, tiny, tmp_path, capsys):
    code, out, err = run_cli(["attribute", "--model", str(tiny("llama")), "--prompt", PROMPT,
                              "--target", TARGET, "--method", "ig", "--steps", str(STEPS),
                              "--baseline", "eos", "--json", "--csv", str(tmp_path / "a.csv"),
                              "--html", str(tmp_path / "a.html")], capsys)
    assert code == 0, err
    data = json.loads(out)
    model, tok = llama.model, llama.tokenizer
    reference = LLMGradientAttribution(
        LayerIntegratedGradients(model, model.get_input_embeddings()), tok).attribute(
        TextTokenInput(PROMPT, tok, baselines=tok.eos_token_id), target=TARGET, n_steps=STEPS)
    close(data["scores"], reference.seq_attr)
    assert data["tokens"] == PROMPT.split()
    assert (data["method"], data["baseline"], data["baseline_id"], data["steps"]) == \
        ("ig", "eos", tok.eos_token_id, STEPS)
    assert abs(data["delta"]) < 1e-3
    rows = list(csv.reader(io.StringIO((tmp_path / "a.csv").read_text(encoding="utf-8"))))
    assert [r[1] for r in rows[1:]] == PROMPT.split()
    assert "<!DOCTYPE html>" in (tmp_path / "a.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("argv, message", [
    (["--target", "x", "--method", "lime"], "error: Unknown attribution method 'lime'"),
    (["--target", "x", "--steps", "0"], "error: The number of steps must be"),
    (["--target", "x", "--baseline", "-3"], "error: Unknown baseline '-3'"),
    (["--target", "x", "--baseline-id", "-1"], "error: The baseline token id must be 0 or more"),
    (["--target", "x", "--baseline-id", "80"], "error: The baseline token id 80 does not exist"),
    (["--target", "x", "--max-new-tokens", "3"], "error: argument --max-new-tokens: not allowed"),
    (["--max-new-tokens", "999"], "error: Max new tokens can be at most 256"),
    (["--target", "x", "--csv", "/no/such/folder/a.csv"], "the folder /no/such/folder does not"),
    (["--label", "positive"], "error: --label is for classifiers"),
    ([], "error: Give --target TEXT"),
])
def test_cli_bad_arguments_are_one_error_line(tiny, capsys, argv, message):
    code, out, err = run_cli(["attribute", "--model", str(tiny("llama")), "--prompt", PROMPT,
                              *argv], capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error:") and message in err


# --- exports ------------------------------------------------------------------------------------------
def test_csv_has_a_column_per_method_and_parses(llama, tmp_path):
    ig = attribute(llama, PROMPT, TARGET, method="ig", steps=4)
    ablation = attribute(llama, PROMPT, TARGET, method="ablation")
    path = export_csv([ig, ablation], tmp_path / "scores.csv")
    rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    assert [r["token"] for r in rows] == PROMPT.split()
    assert [float(r[ig.column_label()]) for r in rows] == ig.scores
    assert [float(r[ablation.column_label()]) for r in rows] == ablation.scores
    other = attribute(llama, "the dog", TARGET, method="ixg")
    with pytest.raises(WorkbenchError, match="different inputs"):
        csv_text([ig, other])
    with pytest.raises(WorkbenchError, match="does not exist"):
        export_csv([ig], tmp_path / "missing" / "scores.csv")


def test_html_is_self_contained_and_escapes_tokens(llama, tmp_path):
    hostile = "</script><script>alert(1)</script>"
    result = attribute(llama, PROMPT, hostile, method="ixg")
    result.tokens[0] = "<script>alert('t')</script>"  # a token as some tokenizer may have it
    generated = attribute(llama, PROMPT, [13, 14, 15], method="ixg")
    path = export_html([result], tmp_path / "page.html")
    page = path.read_text(encoding="utf-8")
    assert "<script" not in page.lower() and "&lt;script&gt;" in page
    assert "default-src 'none'" in page and "http" not in page.replace("http-equiv", "")
    matrix = html_text([generated])
    assert matrix.count("<tr>") == 1 + len(generated.rows) + 1 + len(generated.tokens)


# --- the window ----------------------------------------------------------------------------------------
def test_the_view_runs_on_the_worker_and_shows_the_table(qtbot, tiny, llama):
    from PySide6.QtCore import Qt

    from workbench.core.models.loader import LoadOptions
    from workbench.ui.common.worker import ModelWorker
    from workbench.ui.interpret.attribution_view import AttributionDialog

    worker = ModelWorker()
    try:
        with qtbot.waitSignal(worker.model_changed, timeout=60000):
            worker.submit_load(str(tiny("llama")), LoadOptions())
        dialog = AttributionDialog(worker)
        qtbot.addWidget(dialog)
        view = dialog.view
        dialog.open_on(lambda v: v.set_continuation(PROMPT, TARGET))
        view.method.setCurrentIndex(0)  # integrated gradients
        view.steps.setValue(STEPS)
        qtbot.mouseClick(view.run_button, Qt.MouseButton.LeftButton)
        assert view.run_slot.running and not view.run_button.isEnabled()
        qtbot.waitUntil(lambda: not view.run_slot.running, timeout=60000)
        model, tok = llama.model, llama.tokenizer
        reference = LLMGradientAttribution(
            LayerIntegratedGradients(model, model.get_input_embeddings()), tok).attribute(
            TextTokenInput(PROMPT, tok, baselines=tok.pad_token_id), target=TARGET,
            n_steps=STEPS).seq_attr.tolist()
        table = view.table
        assert table.rowCount() == len(PROMPT.split())
        shown = {table.item(r, 1).text(): table.item(r, 2).data(0) for r in range(4)}
        assert shown["cat"] == pytest.approx(reference[1], abs=1e-6)
        assert "convergence delta" in view.status.text()
        assert view.text.toPlainText() == "thecatsatonthematbecause"
        # a generated sequence with its matrix; a cancelled run keeps the table, greyed
        dialog.open_on(lambda v: v.set_generated(PROMPT, [13, 14, 15], 2,
                                                 prompt_ids=ids_of(llama, PROMPT)))
        view.matrix_box.setChecked(True)
        view.method.setCurrentIndex(3)  # feature ablation
        view.run()
        qtbot.waitUntil(lambda: not view.run_slot.running, timeout=60000)
        assert view.views.isTabEnabled(1) and view.matrix_view.image.image.shape == (7, 3)
        assert view.table.rowCount() == 7 and not math.isnan(view.table.item(0, 2).data(0))
    finally:
        assert worker.shutdown(10000)


# --- the real bundled model --------------------------------------------------------------------------
@pytest.mark.bundled
def test_smollm2_integrated_gradients_are_captums():
    loaded = load_model("SmolLM2-135M-Instruct")
    model, tok = loaded.model, loaded.tokenizer
    prompt, target = "The capital of France is", " Paris"
    result = attribute(loaded, prompt, target, method="ig", steps=8)
    reference = LLMGradientAttribution(
        LayerIntegratedGradients(model, model.get_input_embeddings()), tok).attribute(
        TextTokenInput(prompt, tok, baselines=tok.pad_token_id), target=target, n_steps=8)
    close(result.scores, reference.seq_attr, tol=1e-4)
    assert result.outputs == [" Paris"]
    # a real model's path from the pad baseline is rough: 8 steps leave a large delta, which
    # is captum's own and is said
    delta = captum_delta(loaded, prompt, target_ids(loaded, target), 8)
    assert result.delta == pytest.approx(delta, rel=1e-3, abs=1e-3)
    assert any("convergence delta" in notice for notice in result.notices) == \
        (abs(delta) > 0.1 * abs(result.target_logprob - result.baseline_logprob))
