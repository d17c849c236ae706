"""Tiny random-weight models of every family the app claims, built locally from configs.

Each is saved as a real transformers folder (safetensors + config + a word-level
tokenizer built with the ``tokenizers`` library), so tests exercise the same loading
path as a downloaded model, in well under a second each.
"""

from __future__ import annotations

from pathlib import Path

WORDS = ("the a cat dog sat on mat because it was tired sea is blue and green hello world "
         "model token text of to in for with paris france capital river sky sun").split()


def build_tokenizer(kind: str):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials + WORDS + [w.upper() for w in WORDS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if kind == "encoder":  # [CLS] A [SEP] (B [SEP]), with token types, as BERT does
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
        return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                       cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   bos_token="<s>", eos_token="</s>")


def _config(family: str):
    """The config, model class and tokenizer kind of ``family`` (only its classes are
    imported: each family's modelling module takes a while to import)."""
    import transformers as t

    common = dict(vocab_size=80)
    if family == "gpt2":
        return (t.GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=128, bos_token_id=5,
                             eos_token_id=6, **common),
                t.GPT2LMHeadModel, "decoder")
    if family == "llama":
        return (t.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2,
                              max_position_embeddings=128, **common),
                t.LlamaForCausalLM, "decoder")
    if family == "xlnet":
        return (t.XLNetConfig(d_model=32, n_layer=2, n_head=2, d_inner=64, **common),
                t.XLNetLMHeadModel, "decoder")
    if family in ("bert", "bert-classifier"):
        classifier = family == "bert-classifier"
        return (t.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=128,
                             **(dict(num_labels=2) if classifier else {}), **common),
                t.BertForSequenceClassification if classifier else t.BertModel, "encoder")
    if family == "roberta":
        return (t.RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=130,
                                pad_token_id=0, **common),
                t.RobertaForMaskedLM, "encoder")
    if family == "albert":
        return (t.AlbertConfig(hidden_size=32, embedding_size=16, num_hidden_layers=2,
                               num_attention_heads=2, intermediate_size=64,
                               max_position_embeddings=128, **common),
                t.AlbertForMaskedLM, "encoder")
    if family == "lfm2":  # convolution layers: a cache whose states cannot be repeated per row
        return (t.Lfm2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=128, layer_types=["conv", "full_attention"],
                             pad_token_id=0, bos_token_id=5, eos_token_id=6, **common),
                t.Lfm2ForCausalLM, "decoder")
    raise KeyError(family)


FAMILIES = ("gpt2", "llama", "xlnet", "bert", "roberta", "albert", "bert-classifier")


def build_model(family: str, folder: Path, safe: bool = True) -> Path:
    import torch

    torch.manual_seed(0)
    config, cls, kind = _config(family)
    model = cls(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    build_tokenizer(kind).save_pretrained(folder)
    if not safe:  # the old pickle format only, as many older checkpoints are
        (folder / "model.safetensors").unlink()
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return folder
