"""Attention of a text: weights, head statistics, logit lens, and offline bertviz pages.

bertviz renders the views; the page it returns loads require.js, d3 and jQuery from a
CDN, which fails offline, and pastes the tokens into a ``<script>`` unescaped. The page is
therefore rewritten here: the CDN loader is replaced by a few lines that hand the
installed d3 v5 (from ``mpld3``) and jQuery (from ``XStatic-jQuery``) to bertviz's
``requirejs`` call, and the parameters are re-serialised script-safe, with rounded weights.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from importlib import util as import_util
from pathlib import Path
from typing import Any

from workbench.core.common.errors import WorkbenchError
from workbench.core.common.jobs import JobContext, Progress, run_job
from workbench.core.common.settings import check_fields, check_value, described, setting

DEFAULT_MAX_TOKENS = 64  # tokens analysed (heatmaps, statistics, logit lens)
DEFAULT_PAGE_TOKENS = 64  # tokens drawn by bertviz: its page grows with tokens²
MAX_TOKENS = 1024  # the most tokens analysed or drawn: the weights grow with tokens²


@dataclass
class AttentionSettings:
    """How many tokens an attention view analyses and draws, described once (the checks
    here, the ``attention`` options and the Attention tab's boxes are made from it)."""

    max_tokens: int = setting(
        DEFAULT_MAX_TOKENS, "The number of tokens analysed", low=1, high=MAX_TOKENS,
        unit="tokens", help="tokens analysed (heatmap, head statistics, logit lens); longer "
                            "texts are cut, with a notice")
    page_tokens: int = setting(
        DEFAULT_PAGE_TOKENS, "The number of tokens drawn by bertviz", low=2, high=MAX_TOKENS,
        unit="tokens", help="tokens drawn in the bertviz page (it grows with tokens²)")

    def validate(self) -> None:
        """Raise WorkbenchError unless each setting lies in its range."""
        check_fields(self)


def check_setting(name: str, value: Any) -> None:
    """One of :class:`AttentionSettings`' settings given to a function of this module: None
    (the function's own choice) or a value in the setting's range."""
    if value is not None:
        f, meta = next((f, meta) for f, meta in described(AttentionSettings) if f.name == name)
        check_value(f, meta, value)


@dataclass
class AttentionResult:
    """Attention weights of one forward pass: ``weights[layer, head, query, key]``."""

    model: str
    tokens: list[str]
    weights: Any  # numpy float32 array, layers × heads × T × T
    sentence_b_start: int | None = None
    is_decoder: bool = False
    notices: list[str] = field(default_factory=list)

    @property
    def layers(self) -> int:
        return int(self.weights.shape[0])

    @property
    def heads(self) -> int:
        return int(self.weights.shape[1])

    def head(self, layer: int, head: int | None):
        """One head's T × T weights, or the mean over heads when ``head`` is None."""
        w = self.weights[layer]
        return w.mean(axis=0) if head is None else w[head]


def compute_attention(loaded: Any, text: str, text_b: str | None = None,
                      max_tokens: int | None = DEFAULT_MAX_TOKENS,
                      ctx: JobContext | None = None) -> AttentionResult:
    """Run ``loaded`` on ``text`` (and ``text_b`` for an encoder pair) with attentions on."""
    import numpy as np
    import torch

    from workbench.core.models.catalog import CAUSAL_LM
    from workbench.core.models.info import context_length

    ctx = ctx or JobContext()
    check_setting("max_tokens", max_tokens)
    if not text.strip():
        raise WorkbenchError("The text is empty.")
    decoder = loaded.task == CAUSAL_LM
    if text_b and text_b.strip() and decoder:
        raise WorkbenchError(f"Sentence pairs are for encoders such as all-MiniLM-L6-v2; "
                             f"{loaded.name} is a decoder: put the whole text in sentence A.")
    text_b = text_b if text_b and text_b.strip() else None
    tokenizer = loaded.tokenizer
    context = context_length(loaded.model) or 512
    limit = min(max_tokens or context, context)
    # truncation cannot cut the special tokens, and each sentence keeps one token at least
    least = tokenizer.num_special_tokens_to_add(pair=text_b is not None) + \
        (2 if text_b is not None else 1)
    if limit < least:
        raise WorkbenchError(f"A cap of {limit} token{'s' if limit != 1 else ''} is too small "
                             f"for this input: {loaded.name} adds special tokens around "
                             f"{'each sentence' if text_b is not None else 'the text'}; allow "
                             f"at least {least}.")
    full = tokenizer(text, text_b)["input_ids"]
    notices = []
    if len(full) > limit:
        notices.append(f"The input has {len(full)} tokens: only the first {limit} are shown "
                       f"({'the model context' if limit == context else 'the token cap'}).")
    encoded = tokenizer(text, text_b, truncation="longest_first" if text_b else True,
                        max_length=limit, return_tensors="pt")
    check_attention_memory(loaded, encoded["input_ids"].shape[1])
    ctx.progress("Running the model with attentions…", None)
    with torch.inference_mode(), loaded.eager_attention():
        try:
            out = loaded.model(**{k: v.to(loaded.model.device) for k, v in encoded.items()},
                               output_attentions=True)
        except (TypeError, ValueError) as exc:
            raise WorkbenchError(f"{loaded.name} cannot return attention weights: {exc}") from exc
    attentions = list(getattr(out, "attentions", None) or [])
    del out  # each layer's tensor is let go once copied: one copy of the stack at a time
    if not attentions or any(a is None for a in attentions):
        raise WorkbenchError(f"{loaded.name} returned no attention weights (its attention "
                             "implementation does not expose them).")
    weights = np.empty((len(attentions), *attentions[0].shape[1:]), dtype=np.float32)
    for layer in range(len(weights)):
        weights[layer] = attentions[layer][0].float().cpu().numpy()
        attentions[layer] = None
    ids = encoded["input_ids"][0].tolist()
    tokens = [tokenizer.decode([i]) for i in ids]
    b_start = None
    if text_b is not None:
        try:  # fast tokenizers know which sequence each token came from
            marks = encoded.sequence_ids(0)
        except (ValueError, AttributeError):
            marks = encoded.get("token_type_ids", [[]])[0].tolist()
        b_start = marks.index(1) if 1 in marks else None
    return AttentionResult(loaded.name, tokens, weights, b_start, decoder, notices)


def check_token_cap(value: Any, what: str, least: int) -> None:
    """A token cap is None (the default) or a whole number of at least ``least``."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise WorkbenchError(f"{what} must be a whole number of at least {least}, not {value!r}.")


def attention_layers(model: Any) -> int | None:
    """The number of layers whose attention a forward pass returns, from the config."""
    config = model.config
    try:
        config = config.get_text_config()
    except (AttributeError, TypeError, ValueError):
        pass
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def check_attention_memory(loaded: Any, tokens: int) -> None:
    """Refuse a pass whose attention weights would not fit in memory: layers × heads ×
    tokens² weights, each held in the model's dtype, as float32 and stacked (dtype size +
    8 bytes), against 80% of the memory available now."""
    from workbench.core.common.memory import MEMORY_SHARE, available_memory, format_bytes

    config = loaded.model.config
    layers = attention_layers(loaded.model) or 1
    heads = next((v for v in (getattr(config, n, None) for n in ("num_attention_heads", "n_head"))
                  if isinstance(v, int) and v > 0), 1)
    size = getattr(getattr(loaded.model, "dtype", None), "itemsize", 4)
    need = layers * heads * tokens * tokens * (size + 8)
    available = available_memory()
    if need > available * MEMORY_SHARE:
        raise WorkbenchError(f"The attention of {tokens:,} tokens ({layers} layers × {heads} "
                             f"heads × {tokens:,}² weights) would need about {format_bytes(need)}, more "
                             f"than {MEMORY_SHARE:.0%} of the {format_bytes(available)} available: "
                             "analyse fewer tokens.")


STATISTICS = ("entropy", "previous token", "first token", "mean distance")


def head_statistics(result: AttentionResult) -> dict[str, Any]:
    """Per head (layers × heads): the mean over query positions of the attention row's
    entropy (bits), weight on the previous token, weight on the first token, and mean
    distance |query − key| weighted by attention. One layer at a time in float64: the
    whole stack at once took four float64 copies of it (1000 tokens of a 16-layer,
    32-head model: 16 GB on top of its 2 GB)."""
    import numpy as np

    layers, heads, t = result.weights.shape[0], result.weights.shape[1], result.weights.shape[-1]
    positions = np.arange(t)
    distances = np.abs(positions[:, None] - positions[None, :]).astype(np.float64)
    stats = {name: np.zeros((layers, heads)) for name in STATISTICS}
    for layer in range(layers):
        w = result.weights[layer].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.log2(np.where(w > 0, w, 1.0))
        stats["entropy"][layer] = -(w * logs).sum(-1).mean(-1)
        del logs
        if t > 1:
            stats["previous token"][layer] = w[:, positions[1:], positions[:-1]].mean(-1)
        stats["first token"][layer] = w[:, :, 0].mean(-1)
        stats["mean distance"][layer] = (w * distances).sum(-1).mean(-1)
    return stats


def _final_norm(model: Any):
    for path in ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm",
                 "model.decoder.final_layer_norm", "transformer.norm_f"):
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None:
            return obj
    return None


@dataclass
class LogitLens:
    """The logit lens of a text: each layer's most likely next token at each position."""

    tokens: list[str]
    top_tokens: list[list[str]]  # [layer][position]
    top_probs: list[list[float]]


@dataclass(frozen=True)
class LensStarted:
    """The first event of :class:`LogitLensJob`, after the forward pass: the columns
    (``tokens``) and rows (``layers``) of the lens to come."""

    tokens: list[str]
    layers: int


@dataclass(frozen=True)
class LensColumns:
    """An event of :class:`LogitLensJob`: the lens at positions ``start`` to ``stop``
    (excluded), every layer."""

    start: int
    stop: int
    top_tokens: list[list[str]]  # [layer][position - start]
    top_probs: list[list[float]]


LENS_CHUNK = 16  # positions per chunk: about 0.5 s of SmolLM2's head on 2 cores
HEAD_ROWS = 512  # rows (layer, position) per product with the head: 100 MB of SmolLM2 logits


def next_chunk(done: Sequence[bool], preferred: tuple[int, int], size: int = LENS_CHUNK
               ) -> tuple[int, int] | None:
    """The next positions of the lens to compute, as ``(start, stop)``, or None when all
    are ``done``: first the positions of the ``preferred`` range (the columns on screen)
    not done yet, in one chunk of up to ``4 × size``; then ``size`` positions at a time,
    those nearest the preferred range first (on the right when both sides are as near:
    one reads on), going away from it."""
    n = len(done)
    start, stop = max(0, min(preferred[0], n)), max(0, min(preferred[1], n))
    if stop < start:
        start, stop = stop, start
    first = next((i for i in range(start, stop) if not done[i]), None)
    if first is not None:
        end = first
        while end < stop and not done[end] and end - first < 4 * size:
            end += 1
        return first, end
    right = next((i for i in range(stop, n) if not done[i]), None)
    left = next((i for i in range(start - 1, -1, -1) if not done[i]), None)
    if right is None and left is None:
        return None
    if left is None or (right is not None and right - stop + 1 <= start - left):
        end = right
        while end < n and not done[end] and end - right < size:
            end += 1
        return right, end
    begin = left
    while begin >= 0 and not done[begin] and left - begin < size:
        begin -= 1
    return begin + 1, left + 1


class LogitLensJob:
    """The logit lens of ``text``, computed for the positions on screen first.

    One forward pass gives every layer's hidden states; the final norm and the output
    embedding (vocabulary × hidden: the costly part, layers × positions × vocabulary) are
    then applied a chunk of positions at a time, as :func:`next_chunk` orders them from
    the preferred range. Each chunk is a :class:`LensColumns` event, and the job can be
    cancelled between chunks. :meth:`prefer` may be called from another thread while it
    runs (the GUI, as the table scrolls): the next chunk follows the new range. Only a
    chunk's positions go through the head, at most :data:`HEAD_ROWS` rows at a time, so
    memory never holds positions × vocabulary logits.
    """

    def __init__(self, text: str, max_tokens: int | None = DEFAULT_MAX_TOKENS,
                 first: tuple[int, int] = (0, 0), chunk: int = LENS_CHUNK) -> None:
        check_setting("max_tokens", max_tokens)
        check_token_cap(chunk, "The logit lens chunk", 1)
        self.text, self.max_tokens, self.chunk = text, max_tokens, chunk
        self.preferred = first

    def prefer(self, start: int, stop: int) -> None:
        """Compute positions ``start`` to ``stop`` (excluded) next. Safe from any thread:
        the tuple is replaced whole and read once per chunk."""
        self.preferred = (start, stop)

    def run(self, loaded: Any) -> Generator[Any, None, LogitLens]:
        """The job on ``loaded`` (a causal LM): yields :class:`Progress`,
        :class:`LensStarted` and :class:`LensColumns` events, returns the whole lens."""
        import inspect

        import torch

        from workbench.core.models.catalog import CAUSAL_LM
        from workbench.core.models.info import context_length

        loaded.require(CAUSAL_LM, "the logit lens")
        if not self.text.strip():
            raise WorkbenchError("The text is empty.")
        model, tokenizer = loaded.model, loaded.tokenizer
        limit = min(self.max_tokens or 512, context_length(model) or 512)
        encoded = tokenizer(self.text, truncation=True, max_length=limit, return_tensors="pt")
        head = model.get_output_embeddings()
        norm = _final_norm(model)
        extra = {}
        if "logits_to_keep" in inspect.signature(model.forward).parameters:
            extra["logits_to_keep"] = 1  # the lens makes its own: skip positions × vocabulary
        yield Progress("Logit lens: running the model…", None)
        with torch.inference_mode():
            out = model(**{k: v.to(model.device) for k, v in encoded.items()},
                        output_hidden_states=True, **extra)
        # embeddings, then every layer (the last one normed already)
        states = out.hidden_states[1:]
        del out
        tokens = [tokenizer.decode([t]) for t in encoded["input_ids"][0].tolist()]
        n, layers = len(tokens), len(states)
        yield LensStarted(tokens, layers)
        top_tokens = [[""] * n for _ in range(layers)]
        top_probs = [[0.0] * n for _ in range(layers)]
        done = [False] * n
        count = 0
        while (span := next_chunk(done, self.preferred, self.chunk)) is not None:
            start, stop = span
            width = stop - start
            with torch.inference_mode():
                # only these positions go through the head, every layer's in one product:
                # a product per layer read the head's weights (113 MB for SmolLM2) once
                # per layer and chunk, three times slower than the one-pass lens overall
                rows = torch.cat([(norm(h[:, start:stop]) if i < layers - 1 and norm
                                   is not None else h[:, start:stop])[0]
                                  for i, h in enumerate(states)])
                probs, ids = [], []
                for block in rows.split(HEAD_ROWS):
                    p, idx = torch.softmax(head(block).float(), -1).max(-1)
                    probs.append(p)
                    ids.append(idx)
                p_all, idx_all = torch.cat(probs).tolist(), torch.cat(ids).tolist()
            chunk_tokens = [[tokenizer.decode([t]) for t in idx_all[i:i + width]]
                            for i in range(0, len(idx_all), width)]
            chunk_probs = [p_all[i:i + width] for i in range(0, len(p_all), width)]
            for layer in range(layers):
                top_tokens[layer][start:stop] = chunk_tokens[layer]
                top_probs[layer][start:stop] = chunk_probs[layer]
            done[start:stop] = [True] * (stop - start)
            count += stop - start
            yield LensColumns(start, stop, chunk_tokens, chunk_probs)
            yield Progress(f"Logit lens: {count} of {n} positions", count / n)
        return LogitLens(tokens, top_tokens, top_probs)


def logit_lens(loaded: Any, text: str, max_tokens: int | None = DEFAULT_MAX_TOKENS) -> LogitLens:
    """The most likely next token predicted from each layer's hidden state at each
    position: the final norm and the output embedding applied to intermediate layers
    (the whole of :class:`LogitLensJob`, in order)."""
    job = LogitLensJob(text, max_tokens)
    return run_job(lambda ctx: job.run(loaded))


# --- bertviz, offline and script-safe --------------------------------------------------------
def _asset(package: str, relative: str) -> Path:
    spec = import_util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise WorkbenchError(f"The package that provides {relative} ({package}) is not installed.")
    for root in spec.submodule_search_locations:
        path = Path(root) / relative
        if path.is_file():
            return path
    raise WorkbenchError(f"{package} does not contain {relative}.")


def offline_assets() -> dict[str, bytes]:
    """d3 v5 and jQuery from installed packages (never a CDN)."""
    return {"d3.v5.min.js": _asset("mpld3", "js/d3.v5.min.js").read_bytes(),
            "jquery.min.js": _asset("xstatic.pkg.jquery", "data/jquery.min.js").read_bytes()}


def script_safe_json(data: Any) -> str:
    """JSON that cannot end a ``<script>`` element or open an HTML comment in it."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return (text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _round_weights(node: Any, digits: int) -> Any:
    if isinstance(node, float):
        return round(node, digits)
    if isinstance(node, list):
        return [_round_weights(x, digits) for x in node]
    if isinstance(node, dict):
        return {k: (_round_weights(v, digits) if k == "attn" else v) for k, v in node.items()}
    return node


_SHIM = """<script>
/* bertviz asks require.js for jquery and d3: hand it the copies inlined above. */
var require = {config: function () {}};
function requirejs(names, callback) {
  var modules = {jquery: window.jQuery, d3: window.d3};
  callback.apply(null, names.map(function (n) { return modules[n]; }));
}
</script>"""


def bertviz_html(result: AttentionResult, view: str = "head", layers: list[int] | None = None,
                 digits: int = 3, max_tokens: int | None = DEFAULT_PAGE_TOKENS
                 ) -> tuple[str, list[str]]:
    """A self-contained bertviz page (works offline) and notices about what was left out.

    bertviz draws one SVG line per head and token pair, so its page grows with
    layers × heads × tokens²: ``max_tokens`` keeps the first tokens only (the native views
    still get all of them), and ``layers`` defaults to all layers for small models and to
    an even subset of at most 6 layers for deeper ones.
    """
    import torch
    from bertviz import head_view, model_view

    check_setting("page_tokens", max_tokens)
    if view not in ("head", "model"):
        raise WorkbenchError(f"Unknown view '{view}': use head or model.")
    notices = []
    n = len(result.tokens)
    keep = n if not max_tokens or max_tokens >= n else max_tokens
    sentence_b_start = result.sentence_b_start
    if keep < n:
        notices.append(f"bertviz shows the first {keep} of {n} tokens (its page grows with "
                       "tokens²; raise \"bertviz tokens\" for more); the heatmap, statistics "
                       "and logit lens cover all of them.")
        if sentence_b_start is not None and sentence_b_start >= keep:
            sentence_b_start = None
            notices.append("Sentence B starts after the tokens shown, so the page shows "
                           "sentence A only.")
    if layers is None:
        layers = list(range(result.layers))
        if result.layers > 6:
            step = math.ceil(result.layers / 6)
            layers = list(range(0, result.layers, step))
            notices.append(f"Showing layers {', '.join(map(str, layers))} of {result.layers}; "
                           "choose others with the layer list.")
    if any(isinstance(layer, bool) or not isinstance(layer, int) for layer in layers):
        raise WorkbenchError(f"Layers are whole numbers, not {layers!r}.")
    bad = [layer for layer in layers if not 0 <= layer < result.layers]
    if bad or not layers:
        raise WorkbenchError(f"Layer(s) {bad or layers} do not exist: the model has "
                             f"{result.layers} layers (0–{result.layers - 1}).")
    attention = tuple(torch.from_numpy(result.weights[i][:, :keep, :keep].copy())[None]
                      for i in range(result.layers))
    tokens = [t if t.strip() else t.replace(" ", "␣") or "∅" for t in result.tokens[:keep]]
    kwargs = dict(attention=attention, tokens=tokens, sentence_b_start=sentence_b_start,
                  include_layers=layers, html_action="return")
    if view == "head":
        page = head_view(**kwargs).data
    elif view == "model":
        page = model_view(**kwargs).data
    else:
        raise WorkbenchError(f"Unknown view '{view}': use head or model.")
    # 1. no CDN: drop the require.js tag and the require.config(...) block
    page = re.sub(r"<script src=\"https://[^\"]+\"></script>", "", page)
    page = re.sub(r"require\.config\(\{.*?\}\);", "", page, count=1, flags=re.S)
    # 2. the parameters again, rounded and script-safe
    marker = "const params = "
    start = page.index(marker) + len(marker)
    params, end = json.JSONDecoder().raw_decode(page, start)
    params = {**params, "attention": _round_weights(params["attention"], digits)}
    # bertviz pastes the same JSON a second time into a "// HACK: ..." comment, and a
    # "</script>" ends the script element even there: replace every copy.
    page = page.replace(page[start:end], script_safe_json(params))
    assets = offline_assets()
    scripts = "".join(f"<script>\n{assets[name].decode('utf-8')}\n</script>\n"
                      for name in ("jquery.min.js", "d3.v5.min.js"))
    title = f"{result.model}: bertviz {view} view"
    document = ("<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
                "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; "
                "script-src 'unsafe-inline'; style-src 'unsafe-inline'\">"
                f"<title>{title}</title></head>\n<body style='font-family:sans-serif'>\n"
                f"{scripts}{_SHIM}\n{page}\n</body></html>\n")
    return document, notices


# --- position embeddings ------------------------------------------------------------------------
@dataclass
class PositionEmbeddings:
    """How a model encodes positions, with similarity matrices to look at."""

    kind: str  # "learned" | "rotary" | "none"
    description: str
    learned_similarity: Any = None  # positions × positions cosine similarity, or None
    sinusoidal_similarity: Any = None  # the original Transformer's encoding, for comparison
    positions: int = 0


def sinusoidal_encoding(positions: int, dim: int):
    """PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(pos / 10000^(2i/d))."""
    import numpy as np

    pos = np.arange(positions)[:, None]
    i = np.arange(0, dim, 2)[None, :]
    angle = pos / np.power(10000.0, i / dim)
    pe = np.zeros((positions, dim))
    pe[:, 0::2] = np.sin(angle)
    pe[:, 1::2] = np.cos(angle[:, : dim // 2])
    return pe


def cosine_similarity_matrix(vectors):
    import numpy as np

    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / np.where(norms == 0, 1, norms)
    return unit @ unit.T


def position_embeddings(loaded: Any, positions: int = 128) -> PositionEmbeddings:
    """The learned absolute position table (GPT-2, BERT, ...) as a similarity matrix, or a
    note that the model uses rotary embeddings; the sinusoidal encoding of the original
    Transformer is always given beside it, computed from its formula."""
    config = loaded.model.config
    dim = int(getattr(config, "hidden_size", None) or getattr(config, "n_embd", 64))
    table = None
    for name, param in loaded.model.named_parameters():
        if name.endswith(("position_embeddings.weight", "wpe.weight", "embed_positions.weight")):
            table = param.detach().float().cpu().numpy()
            break
    if table is not None:
        n = min(positions, table.shape[0])
        return PositionEmbeddings(
            "learned", f"{loaded.name} learns an absolute position table "
            f"({table.shape[0]} positions × {table.shape[1]}): cosine similarity of the first "
            f"{n} positions, beside the sinusoidal encoding of the same size.",
            cosine_similarity_matrix(table[:n]),
            cosine_similarity_matrix(sinusoidal_encoding(n, table.shape[1])), n)
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_theta", None)
    sinus = cosine_similarity_matrix(sinusoidal_encoding(positions, dim))
    if rope is not None or config.model_type in ("llama", "mistral", "qwen2", "gemma", "phi3"):
        return PositionEmbeddings(
            "rotary", f"{loaded.name} uses rotary position embeddings (RoPE): positions enter "
            "as rotations of queries and keys inside attention, so there is no position "
            "table to show. The sinusoidal encoding is shown for comparison.",
            None, sinus, positions)
    return PositionEmbeddings(
        "none", f"{loaded.name} has no position table this app recognises. The sinusoidal "
        "encoding is shown for comparison.", None, sinus, positions)
