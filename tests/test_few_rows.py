"""FewRowsLinear: the same numbers as nn.Linear, a faster operand order for a few rows."""

from __future__ import annotations

import copy
from unittest import mock

import pytest
import torch
from torch import nn

from workbench.core.models.few_rows import (
    FewRowsLinear,
    contiguous_output_input,
    few_rows_helps,
    use_few_rows_linears,
)
from workbench.core.models.loader import load_model


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 24), (2, 24), (4, 1, 24), (3, 5, 24), (16, 24),
                                   (17, 24), (2, 9, 24)])
def test_same_result_as_linear(shape, bias):
    torch.manual_seed(0)
    plain = nn.Linear(24, 40, bias=bias)
    fast = copy.deepcopy(plain)
    use_few_rows_linears(fast)
    x = torch.randn(*shape)
    with torch.inference_mode():
        expected = plain(x)
        with mock.patch.object(torch, "mm", wraps=torch.mm) as mm, \
                mock.patch.object(torch, "addmm", wraps=torch.addmm) as addmm:
            got = fast(x)
    rows = x.numel() // x.shape[-1]
    assert (mm.called or addmm.called) == (2 <= rows <= 16)  # the weight-first product
    assert type(fast) is FewRowsLinear
    assert got.shape == expected.shape == (*shape[:-1], 40)
    assert got.is_contiguous()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_with_gradients_it_is_linear_and_trains():
    torch.manual_seed(0)
    plain = nn.Linear(8, 3)
    fast = copy.deepcopy(plain)
    use_few_rows_linears(fast)
    x = torch.randn(4, 8)
    assert torch.equal(fast(x), plain(x))  # the same kernel, bit for bit
    fast(x).sum().backward()
    plain(x).sum().backward()
    torch.testing.assert_close(fast.weight.grad, plain.weight.grad)


def test_only_plain_linears_change_and_the_state_dict_stays(tiny):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny("llama"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    linears = sum(type(m) is nn.Linear for m in model.modules())
    assert use_few_rows_linears(model) == linears > 0
    assert not any(type(m) is nn.Linear for m in model.modules())
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_batch_decodes_the_same_logits(tiny):
    """Four rows of one decoding step: the logits of the converted model match."""
    loaded = load_model(str(tiny("llama")))
    model = loaded.model
    reference = copy.deepcopy(model)
    for module in reference.modules():
        if type(module) is FewRowsLinear:
            module.__class__ = nn.Linear
    ids = torch.tensor([[5, 9, 2], [7, 1, 3], [4, 4, 4], [8, 6, 2]])
    with torch.inference_mode():
        got = model(ids[:, :1]).logits
        expected = reference(ids[:, :1]).logits
        greedy = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                max_new_tokens=6, pad_token_id=0)
        greedy_ref = reference.generate(ids, attention_mask=torch.ones_like(ids),
                                        do_sample=False, max_new_tokens=6, pad_token_id=0)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(greedy, greedy_ref)
    # the loader converts float32 models on the CPU where it helps, and only there
    assert any(type(m) is FewRowsLinear for m in model.modules()) == few_rows_helps()


def _weight_copied_per_row(model, ids) -> tuple:
    """(logits of the last position, whether a batched product over the output weight ran:
    ``matmul``'s fallback that copies that weight once per row)."""
    vocab = model.get_output_embeddings().weight.shape[0]
    with torch.inference_mode(), torch.profiler.profile(record_shapes=True) as prof:
        logits = model(ids, logits_to_keep=1).logits
    copied = any(e.name == "aten::bmm" and any(len(s) == 3 and s[-1] == vocab
                                               for s in e.input_shapes) for e in prof.events())
    return logits, copied


@pytest.mark.parametrize("rows", [1, 4])
def test_generates_first_step_does_not_copy_the_output_weight_per_row(tiny, rows):
    """generate's first step projects ``hidden[:, -1:]``, a strided view: the output layer
    gets it foldable (a copy of the rows, not of the weight), with the same logits."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny("llama")).eval()
    model.requires_grad_(False)  # as in the decoding copies (matmul folds for weights that
    #                              require gradients, whatever the strides)
    ids = torch.randint(0, 80, (rows, 7), generator=torch.Generator().manual_seed(rows))
    # Without the hook, torch 2.13 copies the weight once per row; newer releases may not
    # (torch 2.14.1 does not). What the app relies on is checked whatever torch does.
    expected, _ = _weight_copied_per_row(model, ids)
    assert contiguous_output_input(model)
    got, copied = _weight_copied_per_row(model, ids)
    assert not copied
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # the decoding copies are deep copies: they keep the hook
    assert _weight_copied_per_row(copy.deepcopy(model), ids)[1] is False


def test_loaded_models_have_it_and_training_ones_do_not(tiny):
    from workbench.core.models.loader import LoadOptions

    def hooked(loaded):
        return bool(loaded.model.get_output_embeddings()._forward_pre_hooks)

    assert hooked(load_model(str(tiny("llama"))))
    assert not hooked(load_model(str(tiny("llama")), LoadOptions(training=True)))
