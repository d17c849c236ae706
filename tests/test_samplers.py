"""The samplers beyond transformers' own, each against its published definition computed
here; the sampler order; generation and compare sampling through exactly the chain; the
sampler-stage inspector; settings, strategy specs, export, the command line and the controls."""

import json
import math
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch
from transformers import set_seed

from workbench.core.common.errors import WorkbenchError
from workbench.core.generation.compare import compare
from workbench.core.generation.generate import generate
from workbench.core.generation.samplers import DryLogitsProcessor, breaker_token_ids, draw
from workbench.core.generation.settings import (
    STAGES,
    SamplingSettings,
    parse_strategy,
    row_chain,
    sampler_order,
    sampler_stages,
)
from workbench.core.models.loader import load_model

VOCAB = 80  # the tiny models' vocabulary: top_n=VOCAB records every candidate
LOGITS = torch.tensor([[2.0, 1.5, 1.2, 0.3, -0.5, -1.0, -2.5, -4.0]])


@pytest.fixture(scope="module")
def llama(tiny):
    return load_model(str(tiny("llama")))


def probs(logits) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    e = np.exp(x - x[np.isfinite(x)].max())
    e[~np.isfinite(x)] = 0.0
    return e / e.sum()


def apply(settings: SamplingSettings, logits=LOGITS, ids=(1, 2, 3), **options):
    chain = row_chain(settings, **options)
    return chain(torch.tensor([list(ids)]), logits.clone())[0].numpy()


def sampled(**kw) -> SamplingSettings:
    """Sampling with every classic filter off, then ``kw``."""
    return SamplingSettings(**{**dict(temperature=1.0, top_k=0, top_p=1.0, chat=False), **kw})


# --- DRY ---------------------------------------------------------------------------------------
def dry_reference(ids, breakers, multiplier, base, allowed):
    """DRY as published: a token ``t`` extends a repeat of length ``n`` when the last ``n``
    tokens, followed by ``t``, stand earlier in the text (no breaker among them, ``t`` no
    breaker); its logit loses ``multiplier · base^(n − allowed)`` for its longest ``n`` ≥
    ``allowed``. Found here by searching every earlier place for every suffix length."""
    longest: dict[int, int] = {}
    size = len(ids)
    for n in range(1, size):
        suffix = ids[size - n:]
        if any(t in breakers for t in suffix):
            break
        for j in range(size - n):
            if ids[j:j + n] == suffix and ids[j + n] not in breakers:
                longest[ids[j + n]] = max(longest.get(ids[j + n], 0), n)
    return {t: multiplier * base ** (n - allowed) for t, n in longest.items() if n >= allowed}


@pytest.mark.parametrize("ids, breakers", [
    ([1, 2, 3, 4, 1, 2, 3], set()),  # "1 2 3" again: 4 would extend a repeat of 3
    ([5, 1, 2, 6, 7, 1, 2, 3, 1, 2], set()),  # two earlier "1 2": followed by 6 and by 3
    ([1, 2, 3, 4, 1, 2, 3], {2}),  # a breaker inside the repeat shortens it
    ([1, 1, 1, 1, 1], set()),  # overlapping repeats
    ([3, 4, 5, 6, 7], set()),  # nothing repeats
    ([1, 2, 7, 1, 2, 7, 1, 2], {7}),  # a breaker is never penalised
])
@pytest.mark.parametrize("multiplier, base, allowed", [(0.8, 1.75, 2), (1.5, 2.0, 1)])
def test_dry_penalty_is_multiplier_times_base_to_the_excess(ids, breakers, multiplier, base,
                                                            allowed):
    scores = torch.linspace(1.0, -1.0, 10).reshape(1, -1)
    out = DryLogitsProcessor(multiplier, base, allowed, breakers)(torch.tensor([ids]),
                                                                   scores.clone())
    expected = scores.clone()
    for token, penalty in dry_reference(ids, breakers, multiplier, base, allowed).items():
        expected[0, token] -= penalty
    assert torch.allclose(out, expected, atol=1e-6)


def test_dry_breakers_are_the_tokens_the_texts_become(llama):
    tok = llama.tokenizer
    ids = breaker_token_ids(tok, [" cat", " sat on"])
    assert ids == {tok.convert_tokens_to_ids(w) for w in ("cat", "sat", "on")}
    assert breaker_token_ids(tok, ["\n"]) == frozenset()  # this tokenizer drops newlines


def test_generation_samples_through_dry(llama):
    """The processed distribution generate records is the raw one with DRY's penalties."""
    prompt = "the cat sat on the mat the cat sat on the"
    settings = sampled(max_new_tokens=3, dry_multiplier=1.5, dry_base=2.0, dry_allowed_length=1,
                       dry_sequence_breakers='" mat"', seed=3)
    result = generate(llama, prompt, settings, top_n=VOCAB)
    breakers = {llama.tokenizer.convert_tokens_to_ids("mat")}
    ids = result.prompt_token_ids
    for step in result.sequences[0].steps:
        order = [c.token_id for c in step.candidates]
        logits = np.log([c.raw_probability for c in step.candidates])
        for token, penalty in dry_reference(ids, breakers, 1.5, 2.0, 1).items():
            logits[order.index(token)] -= penalty
        got = [c.probability for c in step.candidates]
        assert np.allclose(got, probs(logits), atol=1e-5)
        ids = ids + [step.token_id]


# --- XTC ---------------------------------------------------------------------------------------
def test_xtc_removes_the_top_choices_but_the_least_likely_of_them():
    p = probs(LOGITS[0])
    threshold = 0.15
    above = [i for i in range(len(p)) if p[i] >= threshold]
    assert len(above) >= 3
    keep_of_above = min(above, key=lambda i: p[i])
    expected = p.copy()
    expected[[i for i in above if i != keep_of_above]] = 0
    got = probs(apply(sampled(xtc_threshold=threshold, xtc_probability=1.0)))
    assert np.allclose(got, expected / expected.sum(), atol=1e-6)
    # with a threshold only one token reaches, or probability 0 (off), nothing changes
    assert np.allclose(probs(apply(sampled(xtc_threshold=0.3, xtc_probability=1.0))), p)
    assert np.allclose(probs(apply(sampled(xtc_threshold=0.15, xtc_probability=0.0))), p)


def test_xtc_fires_with_its_probability_reproducibly():
    settings = sampled(xtc_threshold=0.15, xtc_probability=0.3, seed=11)
    top = int(LOGITS.argmax())
    fired = []
    for position in range(1, 401):  # one decision per position (step) of the run
        out = apply(settings, ids=[0] * position)
        fired.append(bool(np.isinf(out[top])))
    assert 0.22 < sum(fired) / len(fired) < 0.38
    again = [bool(np.isinf(apply(settings, ids=[0] * n)[top])) for n in range(1, 401)]
    assert again == fired  # the same seed, the same draws
    other = [bool(np.isinf(apply(replace(settings, seed=12), ids=[0] * n)[top]))
             for n in range(1, 401)]
    assert other != fired
    # each decision is draw(seed, position, row) < probability, a torch Generator's number
    assert fired == [draw(11, n, 0) < 0.3 for n in range(1, 401)]


# --- Mirostat 2.0 ------------------------------------------------------------------------------
def test_mirostat_truncates_by_surprise_and_updates_mu():
    tau, eta = 1.6, 1.0
    chain = row_chain(sampled(mirostat_mode=2, mirostat_tau=tau, mirostat_eta=eta))
    first = LOGITS.clone()
    surprise = -np.log2(probs(first[0]))
    mu = 2 * tau
    kept = surprise <= mu
    out = chain(torch.tensor([[4, 5]]), first.clone())[0].numpy()
    assert (np.isfinite(out) == kept).all()
    # the chosen token (here the third most likely) comes back as the last input id; its
    # surprise is under the truncated, renormalised distribution
    chosen = 2
    truncated = np.where(kept, probs(first[0]), 0)
    truncated /= truncated.sum()
    mu -= eta * (-np.log2(truncated[chosen]) - tau)
    second = torch.log(torch.tensor([[0.35, 0.3, 0.13, 0.1, 0.05, 0.04, 0.02, 0.01]]))
    out = chain(torch.tensor([[4, 5, chosen]]), second.clone())[0].numpy()
    expected = -np.log2(probs(second[0])) <= mu
    assert (np.isfinite(out) == expected).all()
    assert expected.sum() != (-np.log2(probs(second[0])) <= 2 * tau).sum()  # mu mattered


# --- dynamic temperature, top-nσ, quadratic smoothing ------------------------------------------
@pytest.mark.parametrize("low, high, exponent", [(0.5, 1.5, 1.0), (0.2, 3.0, 2.0), (1.0, 1.0, 1.0)])
def test_dynamic_temperature_scales_with_the_normalised_entropy(low, high, exponent):
    logits = torch.tensor([[1.0, 0.8, 0.1, -0.4, -float("inf"), -2.0]])
    p = probs(logits[0])
    nz = p[p > 0]
    entropy = -(nz * np.log(nz)).sum()
    t = low + (high - low) * (entropy / math.log(5)) ** exponent  # 5 tokens still possible
    settings = sampled(temperature=0.3, dynamic_temperature=True, dynatemp_low=low,
                       dynatemp_high=high, dynatemp_exponent=exponent)
    got = apply(settings, logits)
    assert np.allclose(got[np.isfinite(got)], logits[0].numpy()[np.isfinite(got)] / t, atol=1e-5)
    assert settings.active_stages() == ["dynamic_temperature"]  # it replaces temperature


@pytest.mark.parametrize("n", [0.5, 1.0, 2.0])
def test_top_n_sigma_keeps_logits_within_n_deviations_of_the_top(n):
    x = LOGITS[0].numpy().astype(np.float64)
    expected = x >= x.max() - n * x.std()  # numpy's std: the population deviation
    got = apply(sampled(top_n_sigma=n))
    assert (np.isfinite(got) == expected).all()
    assert np.allclose(got[expected], x[expected])


@pytest.mark.parametrize("factor, curve", [(0.3, 1.0), (1.0, 1.0), (0.5, 2.0), (0.7, 3.0)])
def test_quadratic_smoothing_formula(factor, curve):
    x = LOGITS[0].numpy().astype(np.float64)
    d = x - x.max()
    k, s = (3 - curve) / 2, (curve - 1) / 2
    expected = x.max() - k * factor * d ** 2 + s * factor * d ** 3
    got = apply(sampled(smoothing_factor=factor, smoothing_curve=curve))
    assert np.allclose(got, expected, atol=1e-4)


# --- the order ----------------------------------------------------------------------------------
def test_sampler_order_puts_the_named_stages_in_their_places():
    assert sampler_order("") == STAGES
    order = sampler_order("min_p, temperature")
    assert order.index("min_p") == STAGES.index("temperature")
    assert order.index("temperature") == STAGES.index("min_p")
    assert [s for s in order if s not in ("min_p", "temperature")] == \
        [s for s in STAGES if s not in ("min_p", "temperature")]
    assert sampler_order(" > ".join(reversed(STAGES))) == tuple(reversed(STAGES))
    assert sampler_order("top-k>eps_cutoff") == sampler_order("top_k,epsilon_cutoff")


def test_the_order_is_honoured():
    """Temperature then min-p (transformers' order) keeps more than min-p then temperature."""
    t, min_p = 3.0, 0.3
    x = LOGITS[0].numpy().astype(np.float64)

    def min_p_filter(logits):
        p = probs(logits)
        return np.where(p >= min_p * p.max(), logits, -np.inf)

    default = probs(min_p_filter(x / t))
    swapped = probs(min_p_filter(x) / t)
    assert (default > 0).sum() != (swapped > 0).sum()
    settings = sampled(temperature=t, min_p=min_p)
    assert np.allclose(probs(apply(settings)), default, atol=1e-6)
    assert np.allclose(probs(apply(replace(settings, sampler_order="min_p,temperature"))),
                       swapped, atol=1e-6)


def test_generation_samples_through_the_order_it_is_given(llama):
    t, min_p = 0.1, 0.5
    for order in ("", "min_p,temperature"):
        settings = sampled(max_new_tokens=3, temperature=t, min_p=min_p, sampler_order=order,
                           seed=5)
        result = generate(llama, "the cat sat on", settings, top_n=VOCAB)
        for step in result.sequences[0].steps:
            x = np.log([c.raw_probability for c in step.candidates])
            if order:  # min-p on the model's distribution, then the temperature
                p = probs(x)
                expected = probs(np.where(p >= min_p * p.max(), x, -np.inf) / t)
            else:
                p = probs(x / t)
                expected = probs(np.where(p >= min_p * p.max(), x / t, -np.inf))
            assert np.allclose([c.probability for c in step.candidates], expected, atol=1e-5)
            assert step.kept_count == (expected > 0).sum()


# --- the default path is plain generate --------------------------------------------------------
@pytest.mark.parametrize("settings", [
    SamplingSettings(max_new_tokens=12, chat=False),  # the defaults
    SamplingSettings(max_new_tokens=12, chat=False, do_sample=False, repetition_penalty=1.3,
                     no_repeat_ngram_size=2),
    SamplingSettings(max_new_tokens=10, chat=False, temperature=1.4, top_k=0, top_p=0.95,
                     min_p=0.02, typical_p=0.9, num_return_sequences=3, seed=9),
    SamplingSettings(max_new_tokens=10, chat=False, temperature=0.3, top_h=0.6,
                     epsilon_cutoff=0.004, eta_cutoff=0.003, seed=2),
    SamplingSettings(max_new_tokens=8, chat=False, do_sample=False, num_beams=3,
                     num_return_sequences=2, repetition_penalty=1.2),
])
def test_default_path_gives_the_tokens_of_plain_generate(llama, settings):
    ids = llama.tokenizer("the cat sat on", return_tensors="pt")["input_ids"]
    set_seed(settings.seed)
    with torch.inference_mode():
        plain = llama.model.generate(ids, attention_mask=torch.ones_like(ids),
                                     pad_token_id=llama.tokenizer.pad_token_id,
                                     **settings.generate_kwargs())
    result = generate(llama, "the cat sat on", settings)
    stop = llama.model.generation_config.eos_token_id  # what ends a row in generate
    eos = set(stop) if isinstance(stop, list) else {stop}
    assert len(result.sequences) == plain.shape[0]
    for row, seq in enumerate(result.sequences):
        expected = plain[row, ids.shape[1]:].tolist()
        end = next((i for i, t in enumerate(expected) if t in eos), None)
        if end is not None:  # an ended row is padded after its end of text
            expected = expected[:end + 1]
        assert seq.token_ids == expected


# --- compare: each row through its own chain -----------------------------------------------------
@pytest.mark.parametrize("spec", [
    "dry_multiplier=1.5,dry_allowed_length=1,temperature=1.2",
    "xtc_probability=0.7,xtc_threshold=0.013",
    "mirostat=2,mirostat_tau=6.2,temperature=0.2",
    "top_n_sigma=1.0,smoothing_factor=0.5",
    "dynamic_temperature=true,dynatemp_low=0.3,dynatemp_high=2",
    "min_p=0.5,temperature=0.1,sampler_order=min_p>temperature",
])
def test_a_strategy_with_new_samplers_samples_in_the_batch_as_alone(llama, spec):
    strategy = parse_strategy(spec)
    batched = compare(llama, "the cat the cat", [strategy], seed=4, max_new_tokens=8, chat=False)
    alone = generate(llama, "the cat the cat", replace(strategy.settings, max_new_tokens=8,
                                                       seed=4, chat=False))
    assert batched.strategies[0].sequences[0].token_ids == alone.token_ids
    for a, b in zip(batched.strategies[0].sequences[0].steps, alone.sequences[0].steps,
                    strict=True):
        assert a.probability == pytest.approx(b.probability, abs=1e-5)
        assert a.kept_count == b.kept_count


# --- the sampler-stage inspector -----------------------------------------------------------------
def test_sampler_stages_against_a_hand_computation():
    raw = np.array([2.0, 1.5, 1.2, 0.3, -0.5, -1.0])
    ids = [5, 2]  # in the text: the repetition penalty divides a positive logit (token 2)
    settings = sampled(repetition_penalty=1.5, temperature=0.5, top_k=3, min_p=0.3)
    chosen = 2
    logits = raw.copy()
    logits[2] /= 1.5
    logits[5] *= 1.5  # and multiplies a negative one
    expected_scores = [("raw", raw), ("repetition_penalty", logits.copy())]
    logits = logits / 0.5
    expected_scores.append(("temperature", logits.copy()))
    third = np.sort(logits)[-3]
    logits = np.where(logits >= third, logits, -np.inf)
    expected_scores.append(("top_k", logits.copy()))
    p = probs(logits)
    logits = np.where(p >= 0.3 * p.max(), logits, -np.inf)
    expected_scores.append(("min_p", logits.copy()))
    raw_p = probs(raw)
    stages = sampler_stages(settings, ids, torch.tensor(raw, dtype=torch.float32), chosen)
    assert [s.name for s in stages] == [name for name, _ in expected_scores]
    for stage, (name, scores) in zip(stages, expected_scores, strict=True):
        p = probs(scores)
        kept = p > 0
        assert stage.kept_count == kept.sum(), name
        assert stage.kept_mass == pytest.approx(raw_p[kept].sum(), abs=1e-6)
        assert stage.entropy == pytest.approx(-(p[kept] * np.log2(p[kept])).sum(), abs=1e-5)
        assert stage.chosen_probability == pytest.approx(p[chosen], abs=1e-6)
        if p[chosen] > 0:
            assert stage.chosen_rank == 1 + (p > p[chosen]).sum()
        else:
            assert stage.chosen_rank is None
    assert stages[-1].chosen_rank is None  # min-p removed the chosen token


def test_sampler_stages_replay_xtc_as_the_run_drew_it():
    settings = sampled(xtc_threshold=0.15, xtc_probability=0.5, seed=7)
    top = int(LOGITS.argmax())
    for position in range(1, 30):
        stages = sampler_stages(settings, [0] * position, LOGITS, top)
        assert (stages[-1].chosen_probability == 0) == (draw(7, position, 0) < 0.5)


# --- settings ------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, message", [
    (dict(top_h=1.5), "Top-h must be in \\[0, 1\\] \\(0 is off\\)"),
    (dict(epsilon_cutoff=1.0), "Epsilon cutoff must be in \\[0, 1\\)"),
    (dict(eta_cutoff=-0.1), "Eta cutoff must be in \\[0, 1\\)"),
    (dict(top_n_sigma=-1.0), "Top-nσ must be 0 \\(off\\) or above"),
    (dict(dynatemp_low=0.0), "The lowest dynamic temperature must be above 0"),
    (dict(dynatemp_low=2.0, dynatemp_high=1.0), "must be at least the lowest"),
    (dict(dynatemp_exponent=0.0), "exponent must be above 0"),
    (dict(smoothing_factor=-0.5), "The smoothing factor must be 0 \\(off\\) or above"),
    (dict(smoothing_curve=4.0), "The smoothing curve must be in \\[1, 3\\]"),
    (dict(xtc_threshold=0.6), "The XTC threshold must be in \\(0, 0.5\\]"),
    (dict(xtc_probability=1.5), "The XTC probability must be in \\[0, 1\\]"),
    (dict(mirostat_mode=1), "The Mirostat mode must be 0 \\(off\\) or 2"),
    (dict(mirostat_eta=0.0), "Mirostat's eta must be in \\(0, 1\\]"),
    (dict(mirostat_tau=-1.0), "Mirostat's tau must be 0 or above"),
    (dict(dry_multiplier=-1.0), "The DRY multiplier must be 0 \\(off\\) or above"),
    (dict(dry_base=0.5), "The DRY base must be at least 1"),
    (dict(dry_allowed_length=0), "DRY's allowed length must be at least 1"),
    (dict(dry_sequence_breakers="\\n, :"), "DRY's sequence breakers must be quoted texts"),
    (dict(sampler_order="top_k,warp"), "names 'warp', which is not a stage"),
    (dict(sampler_order="top_k,top-k"), "names top_k twice"),
    (dict(sampler_order=3), "The sampler order must be text"),
    (dict(xtc_probability="0.5"), "The XTC probability must be a finite number"),
    (dict(mirostat_mode=2.0), "The Mirostat mode must be a whole number"),
])
def test_bad_sampler_settings_are_refused_in_one_sentence(change, message):
    with pytest.raises(WorkbenchError, match=message) as error:
        SamplingSettings(**change).validate()
    assert "\n" not in str(error.value) and str(error.value).endswith(".")


def test_new_samplers_are_off_by_default_and_described_when_on():
    assert SamplingSettings().active_stages() == ["temperature", "top_k", "top_p"]
    assert SamplingSettings().describe() == "temperature 0.7, top-k 50, top-p 0.9"
    on = SamplingSettings(dry_multiplier=0.8, xtc_probability=0.5, mirostat_mode=2,
                          sampler_order="top_p,top_k")
    text = on.describe()
    assert "DRY 0.8" in text and "XTC 0.1 at 0.5" in text and "Mirostat 2" in text
    assert text.index("top-p") < text.index("top-k") and text.endswith("(in this order)")
    assert SamplingSettings(do_sample=False, dry_multiplier=0.8, top_n_sigma=1.0) \
        .active_stages() == ["dry"]  # DRY shapes greedy decoding; top-nσ only sampling


def test_settings_round_trip_through_saved_state():
    from workbench.core.generation.session import settings_from_data

    s = SamplingSettings(top_h=0.4, epsilon_cutoff=0.0003, dry_multiplier=0.8,
                         dry_sequence_breakers='"\\n", "#"', sampler_order="min_p,temperature",
                         mirostat_mode=2, dynamic_temperature=True, xtc_probability=0.25)
    assert settings_from_data(json.loads(json.dumps(asdict(s)))) == s


# --- strategy specs ------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, expected", [
    ("xtc_probability=0.5,xtc_threshold=0.2", dict(xtc_probability=0.5, xtc_threshold=0.2,
                                                   do_sample=True, top_k=0)),
    ("mirostat=2,mirostat-tau=4", dict(mirostat_mode=2, mirostat_tau=4.0)),
    ("dynatemp=on,dynatemp_low=0.2", dict(dynamic_temperature=True, dynatemp_low=0.2)),
    ("top_n_sigma=1.5,order=min_p>temperature", dict(top_n_sigma=1.5,
                                                     sampler_order="min_p>temperature")),
    ("greedy,dry_multiplier=0.8,dry_length=3", dict(do_sample=False, dry_multiplier=0.8,
                                                    dry_allowed_length=3)),
    ("eps_cutoff=0.001,eta_cutoff=0.002,top_h=0.3", dict(epsilon_cutoff=0.001,
                                                         eta_cutoff=0.002, top_h=0.3)),
])
def test_parse_strategy_reads_the_new_settings(spec, expected):
    settings = parse_strategy(spec).settings
    for key, value in expected.items():
        assert getattr(settings, key) == value, key


def test_a_strategy_turns_off_the_filters_it_does_not_name():
    base = SamplingSettings(xtc_probability=0.5, top_n_sigma=1.0, dry_multiplier=0.8,
                            sampler_order="top_p,top_k")
    settings = parse_strategy("top_k=40", base).settings
    assert settings.xtc_probability == 0 and settings.top_n_sigma == 0  # filters: off
    assert settings.dry_multiplier == 0.8 and settings.sampler_order == "top_p,top_k"


@pytest.mark.parametrize("spec, message", [
    ("greedy,xtc_probability=0.5", "only shapes sampling"),
    ("sampler_order=top_k>foo", "not a stage"),
    ("mirostat=yes", "is not a number"),
])
def test_bad_strategy_specs_are_refused(spec, message):
    with pytest.raises(WorkbenchError, match=message):
        parse_strategy(spec)


# --- GenerationConfig export and import ----------------------------------------------------------
def test_export_keeps_what_a_generation_config_holds_and_names_the_rest():
    s = SamplingSettings(top_h=0.4, epsilon_cutoff=0.0003, eta_cutoff=0.0002, min_p=0.05,
                         dry_multiplier=0.8, xtc_probability=0.5, top_n_sigma=1.0,
                         sampler_order="min_p,temperature")
    from transformers import GenerationConfig

    config = s.to_generation_config()
    back = GenerationConfig.from_dict(config)  # transformers reads the file back
    assert (back.top_h, back.epsilon_cutoff, back.eta_cutoff) == (0.4, 0.0003, 0.0002)
    assert not any(k.startswith(("dry", "xtc", "mirostat", "sampler")) for k in config)
    assert s.not_in_generation_config() == ["DRY", "top-nσ", "XTC", "the sampler order"]
    imported = SamplingSettings.from_generation_config(config)
    assert (imported.top_h, imported.epsilon_cutoff, imported.eta_cutoff) == (0.4, 0.0003, 0.0002)
    plain = SamplingSettings(top_k=40, top_p=0.8, sampler_order="dry,xtc")  # order of stages off
    assert plain.not_in_generation_config() == []


# --- the command line ----------------------------------------------------------------------------
def cli(capsys, *argv):
    from workbench.cli import build_parser, dispatch

    code = dispatch(build_parser().parse_args(list(argv)))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("argv, message", [
    (("--sampler-order", "top_k,nope"), "error: The sampler order names 'nope'"),
    (("--xtc-threshold", "0.9"), "error: The XTC threshold must be in (0, 0.5]"),
    (("--mirostat-mode", "1"), "error: The Mirostat mode must be 0 (off) or 2"),
    (("--dry-sequence-breakers", "a, b"), "error: DRY's sequence breakers must be quoted"),
    (("--dynamic-temperature", "--dynatemp-low", "0"), "error: The lowest dynamic temperature"),
])
def test_cli_refuses_bad_sampler_values_in_one_line(capsys, tmp_path, argv, message):
    code, out, err = cli(capsys, "generate", "--model", str(tmp_path / "never-loaded"),
                         "--prompt", "x", *argv)
    assert code == 2 and out == ""
    assert err.splitlines() == [err.strip()] and err.startswith(message)


def test_cli_generate_and_compare_with_the_new_samplers(capsys, tiny, tmp_path):
    model = str(tiny("llama"))
    config = tmp_path / "generation_config.json"
    code, out, err = cli(capsys, "generate", "--model", model, "--prompt", "the cat the cat",
                         "--no-chat", "--max-new-tokens", "4", "--dry-multiplier", "0.8",
                         "--xtc-probability", "0.5", "--xtc-threshold", "0.02", "--top-h", "0.5",
                         "--sampler-order", "min_p,temperature", "--min-p", "0.05",
                         "--export-config", str(config), "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["settings"]["dry_multiplier"] == 0.8
    assert data["settings"]["sampler_order"] == "min_p,temperature"
    assert json.loads(config.read_text())["top_h"] == 0.5
    assert "leaves out DRY, XTC, the sampler order" in err
    code, out, err = cli(capsys, "compare", "--model", model, "--prompt", "the cat", "--no-chat",
                         "--max-new-tokens", "4", "--strategy", "mirostat=2,mirostat_tau=4",
                         "--strategy", "top_k=5,sampler_order=top_k>temperature",
                         "--sampler-order", "top_p,top_k", "--json")
    assert code == 0, err
    first, second = json.loads(out)["strategies"]
    assert first["settings"]["mirostat_mode"] == 2
    assert first["settings"]["sampler_order"] == "top_p,top_k"  # the base order
    assert second["settings"]["sampler_order"] == "top_k>temperature"


# --- the controls ---------------------------------------------------------------------------------
def test_controls_round_trip_the_new_settings_and_change_the_order(qtbot, tmp_path):
    from workbench.ui.common.state import read_preset, write_preset
    from workbench.ui.generation.controls import DecodingControls

    errors = []
    controls = DecodingControls(lambda title, text: errors.append(text))
    qtbot.addWidget(controls)
    s = SamplingSettings(top_h=0.4, epsilon_cutoff=0.0003, eta_cutoff=0.0002, top_n_sigma=1.5,
                         dynamic_temperature=True, dynatemp_low=0.3, dynatemp_high=1.8,
                         dynatemp_exponent=1.5, smoothing_factor=0.25, smoothing_curve=2.0,
                         xtc_threshold=0.2, xtc_probability=0.4, mirostat_mode=2,
                         mirostat_tau=4.0, mirostat_eta=0.2, dry_multiplier=0.8, dry_base=2.0,
                         dry_allowed_length=3, dry_sequence_breakers='"\\n", "#"',
                         sampler_order="min_p,temperature")
    controls.set_settings(s)
    assert controls.settings() == s
    assert controls.more_group.isVisibleTo(controls)  # shown: these settings use it
    write_preset("many samplers", controls.settings())
    assert read_preset("many samplers") == s
    shown = [controls.order_list.item(i).text() for i in range(controls.order_list.count())]
    assert tuple(shown) == sampler_order("min_p,temperature")
    controls.order_list.setCurrentRow(shown.index("top_k"))
    controls.move_stage(-1)  # top-k one place earlier: before top-h
    expected = list(shown)
    i = expected.index("top_k")
    expected[i - 1], expected[i] = expected[i], expected[i - 1]
    assert sampler_order(controls.settings().sampler_order) == tuple(expected)
    controls.order_text.setText("")
    assert sampler_order(controls.settings().sampler_order) == STAGES
    controls.export_config(str(tmp_path / "config.json"))
    assert not errors
    assert "DRY" in controls.config_note.text() and "XTC" in controls.config_note.text()
