"""The encoder stage: one transformer pass per message window, several heads on top.

Why this shape:
- A customer's ask is often buried deep in a long message, and whether a sentence is an ask
  depends on the sentences around it ("Can you remove it?" needs the sentence before). So the
  encoder reads the *whole* message in overlapping windows and every sentence is pooled from
  its tokens *in context*, in the window where it has the most context on both sides.
- Sentence heads (ask, intent) and message heads (product) share that single pass, so adding a
  head costs almost nothing at inference.
- Nothing is truncated: a sentence longer than a window is cut into pieces that are scored
  separately and recombined.

Tokenizer encodings and tensors stay inside this module; callers get numpy arrays.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from tokenizers import Tokenizer
from torch import nn

from pipeline.bert import BertEncoder, BertSelfAttention, BertSettings
from pipeline.config import EncoderConfig
from pipeline.errors import ModelLoadError
from pipeline.ood import OutOfScopeDetector
from pipeline.runtime import (
    PrepackedBf16Linear,
    configure_threads,
    inference_context,
    prepack_bf16_linears,
    resolve_bf16_attention,
    resolve_precision,
)
from pipeline.signal_head import SignalHead

log = logging.getLogger(__name__)


class HeadSpec(BaseModel):
    """One prediction head: what it reads (a sentence or the whole message) and its labels."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Head name, e.g. ask, intent, product.")
    level: Literal["sentence", "message"] = Field(description="Pooled over one sentence or the message.")
    kind: Literal["binary", "multiclass"] = Field(description="binary: one sigmoid logit; else softmax.")
    labels: list[str] = Field(description="Class names in logit order (binary: [negative, positive]).")
    temperature: float = Field(
        default=1.0, gt=0.0, description="Calibration temperature fitted on held-out data."
    )

    @property
    def n_outputs(self) -> int:
        return 1 if self.kind == "binary" else len(self.labels)


class Pooled(NamedTuple):
    """What one forward pass pools: per piece, per message, and (when asked) per piece of middle layers."""

    piece_rep: torch.Tensor  # [pieces, hidden] mean of the last layer over each piece's tokens
    message_sum: torch.Tensor  # [messages, hidden] un-normalised sums over each message's tokens
    message_count: torch.Tensor  # [messages] token counts
    piece_taps: torch.Tensor | None  # [pieces, hidden x len(taps)] means of the tapped layers


class HearkenNet(nn.Module):
    """A BERT encoder with small MLP heads over pooled sentence pieces and whole messages."""

    def __init__(
        self,
        bert_settings: BertSettings,
        heads: Sequence[HeadSpec],
        head_dropout: float = 0.1,
        initialise: bool = True,
    ) -> None:
        super().__init__()
        self.encoder = BertEncoder(bert_settings, initialise=initialise)
        hidden = bert_settings.hidden_size
        self.head_specs = {h.name: h for h in heads}
        self.heads = nn.ModuleDict(
            {
                h.name: nn.Sequential(
                    nn.Dropout(head_dropout),
                    nn.Linear(hidden, hidden),
                    nn.GELU(),
                    nn.Dropout(head_dropout),
                    nn.Linear(hidden, h.n_outputs),
                )
                for h in heads
            }
        )

    def pool(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        piece_index: torch.Tensor,
        piece_message: torch.Tensor,
        n_messages: int,
        taps: Sequence[int] = (),
    ) -> Pooled:
        """Encode windows; return piece representations and per-message token sums and counts.

        ``piece_index`` [windows, tokens] holds, per token, the batch-global index of the sentence
        piece it belongs to (-1 for special tokens, padding and context-only tokens), so every
        token of a message is pooled exactly once however the windows overlap. Message sums are
        returned un-normalised so that a long message spread over several batches can be summed.
        ``taps`` also pools the outputs of those layers (1-based) per piece, side by side.
        """
        hidden, tapped = self.encoder.hidden_states(input_ids, attention_mask, taps)
        hidden = hidden.float()
        flat_index = piece_index.reshape(-1)
        keep = flat_index >= 0
        kept_index = flat_index[keep]
        n_pieces = piece_message.shape[0]

        def sum_pieces(states: torch.Tensor) -> torch.Tensor:
            flat = states.float().reshape(-1, states.shape[-1])
            sums = torch.zeros(n_pieces, flat.shape[-1], dtype=torch.float32, device=flat.device)
            return sums.index_add_(0, kept_index, flat[keep])

        piece_sum = sum_pieces(hidden)
        piece_count = torch.bincount(kept_index, minlength=n_pieces).to(hidden.dtype)
        piece_rep = piece_sum / piece_count.clamp(min=1.0)[:, None]
        message_sum = torch.zeros(n_messages, hidden.shape[-1], dtype=hidden.dtype, device=hidden.device)
        message_sum.index_add_(0, piece_message, piece_sum)
        message_count = torch.zeros(n_messages, dtype=hidden.dtype, device=hidden.device)
        message_count.index_add_(0, piece_message, piece_count)
        piece_taps = None
        if taps:
            piece_taps = torch.cat([sum_pieces(states) for states in tapped], dim=1)
            piece_taps /= piece_count.clamp(min=1.0)[:, None]
        return Pooled(piece_rep, message_sum, message_count, piece_taps)

    def head_logits(
        self, level: Literal["sentence", "message"], rep: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Apply every head of one level to pooled representations."""
        return {name: self.heads[name](rep) for name, spec in self.head_specs.items() if spec.level == level}

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        piece_index: torch.Tensor,
        piece_message: torch.Tensor,
        n_messages: int,
    ) -> dict[str, torch.Tensor]:
        """Logits of every head, for a batch that holds all windows of each of its messages."""
        piece_rep, message_sum, message_count, _ = self.pool(
            input_ids, attention_mask, piece_index, piece_message, n_messages
        )
        outputs = self.head_logits("sentence", piece_rep)
        if any(spec.level == "message" for spec in self.head_specs.values()):
            outputs.update(self.head_logits("message", message_sum / message_count.clamp(min=1.0)[:, None]))
        return outputs


# ----------------------------------------------------------------------------------------------
# Windows


@dataclass(frozen=True)
class Piece:
    """A sentence, or a part of an over-long sentence, as a token range of the message."""

    sentence: int
    token_start: int
    token_end: int


@dataclass
class Window:
    """Token range of one encoder window and the pieces it is responsible for."""

    message: int
    token_start: int
    token_end: int
    pieces: list[Piece] = field(default_factory=list)


@dataclass
class TokenisedMessage:
    """Token ids and character offsets of one message body (no special tokens)."""

    ids: list[int]
    starts: list[int]
    ends: list[int]


def sentence_token_ranges(
    tokens: TokenisedMessage, sentences: Sequence[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Map character spans of sentences to token ranges (tokens that overlap the span)."""
    ranges = []
    for start, end in sentences:
        first = bisect.bisect_right(tokens.ends, start)  # first token ending after the span start
        last = bisect.bisect_left(tokens.starts, end)  # first token starting at/after the span end
        ranges.append((first, max(first, last)))
    return ranges


def plan_windows(
    message: int,
    n_tokens: int,
    sentence_ranges: Sequence[tuple[int, int]],
    max_window_tokens: int,
    overlap: int,
) -> list[Window]:
    """Cover a message with windows so every sentence piece is scored with context both sides.

    A piece is at most ``content - 2*overlap`` tokens, so it always fits in a window with
    ``overlap`` tokens of context before and after it (where the message has them).
    """
    content = max_window_tokens - 2
    pieces: list[Piece] = []
    max_piece = content if n_tokens <= content else content - 2 * overlap
    for index, (start, end) in enumerate(sentence_ranges):
        if end <= start:
            continue  # a sentence with no tokens (e.g. only control characters) has nothing to score
        for piece_start in range(start, end, max_piece):
            pieces.append(Piece(index, piece_start, min(end, piece_start + max_piece)))
    if not pieces:
        return []
    if n_tokens <= content:
        return [Window(message, 0, n_tokens, pieces)]
    windows: list[Window] = []
    i = 0
    while i < len(pieces):
        start = max(0, pieces[i].token_start - overlap)
        start = max(0, min(start, n_tokens - content))
        end = min(n_tokens, start + content)
        owned_end = end if end == n_tokens else end - overlap
        window = Window(message, start, end)
        while i < len(pieces) and pieces[i].token_end <= owned_end:
            window.pieces.append(pieces[i])
            i += 1
        if not window.pieces:  # cannot happen given max_piece, but never loop forever
            window.pieces.append(pieces[i])
            i += 1
        windows.append(window)
    return windows


@dataclass
class Batch:
    """Tensors for one forward pass plus the bookkeeping to map outputs back."""

    tensors: dict[str, torch.Tensor]
    message_ids: list[int]  # global message index of each batch-local message
    pieces: list[tuple[int, Piece]]  # (global message index, piece)

    @property
    def n_messages(self) -> int:
        return len(self.message_ids)


SHORT_PAD_MULTIPLE = 8


def collate(
    windows: Sequence[Window],
    tokens: Sequence[TokenisedMessage],
    cls_id: int,
    sep_id: int,
    pad_id: int,
    pad_to_multiple_of: int = 1,
) -> Batch:
    """Build padded tensors for a list of windows (dynamic padding to the longest window).

    Rounding the padded length up to a multiple bounds the number of distinct tensor shapes a
    long-running service sees; oneDNN caches kernels per shape, so without it memory creeps up.
    Batches shorter than one multiple (sentences read alone, one-line messages) round up to
    ``SHORT_PAD_MULTIPLE`` instead: padding a 14-token sentence to 32 nearly doubles its compute
    (one 16-token window 3.0-3.3 ms against 3.6-3.7 ms at 32, two 3.8-4.2 against 4.9-6.4 ms, bf16,
    2 threads), and it adds at most ``pad_to_multiple_of / SHORT_PAD_MULTIPLE`` shapes.
    """
    longest = max(w.token_end - w.token_start for w in windows) + 2
    multiple = (
        pad_to_multiple_of if longest > pad_to_multiple_of else min(pad_to_multiple_of, SHORT_PAD_MULTIPLE)
    )
    length = -(-longest // multiple) * multiple
    input_ids = torch.full((len(windows), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(windows), length), dtype=torch.long)
    piece_index = torch.full((len(windows), length), -1, dtype=torch.long)
    message_ids = sorted({w.message for w in windows})
    local_message = {m: i for i, m in enumerate(message_ids)}
    piece_message: list[int] = []
    pieces: list[tuple[int, Piece]] = []
    for row, window in enumerate(windows):
        ids = tokens[window.message].ids[window.token_start : window.token_end]
        n = len(ids) + 2
        input_ids[row, :n] = torch.tensor([cls_id, *ids, sep_id], dtype=torch.long)
        attention[row, :n] = 1
        for piece in window.pieces:
            a = piece.token_start - window.token_start + 1
            b = piece.token_end - window.token_start + 1
            piece_index[row, a:b] = len(pieces)
            piece_message.append(local_message[window.message])
            pieces.append((window.message, piece))
    tensors = {
        "input_ids": input_ids,
        "attention_mask": attention,
        "piece_index": piece_index,
        "piece_message": torch.tensor(piece_message, dtype=torch.long),
    }
    return Batch(tensors, message_ids, pieces)


# ----------------------------------------------------------------------------------------------
# Inference stage


@dataclass
class EncoderOutput:
    """Per-message probabilities from every head (numpy; nothing torch leaves this module)."""

    sentence_probs: dict[str, np.ndarray]  # head -> [n_sentences] (binary) or [n_sentences, n_labels]
    message_probs: dict[str, np.ndarray]  # head -> [n_labels]
    sentence_scored: np.ndarray  # [n_sentences] bool: False for sentences with no tokens
    # [n_sentences] distance to the nearest intent as a held-out percentile (with a detector only)
    sentence_out_of_scope: np.ndarray | None = None
    # [n_sentences, hidden] the vectors the sentence heads read (only when asked for: fitting)
    sentence_vectors: np.ndarray | None = None
    # [n_sentences, signals] the signal head's probabilities (with a signal head only)
    sentence_signal_probs: np.ndarray | None = None
    # [n_sentences, hidden x layers] pooled middle-layer states (only when asked for: fitting)
    sentence_signal_features: np.ndarray | None = None


def load_tokenizer(path: Path) -> Tokenizer:
    """Load ``tokenizer.json`` with truncation and padding switched off.

    The file shipped with all-MiniLM-L6-v2 fixes both at 128 tokens, which would silently cut
    every message; windows are planned here instead.
    """
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


class TextEncoder:
    """Runs the network over message bodies split into sentences; returns calibrated probabilities."""

    def __init__(self, net: HearkenNet, tokenizer: Tokenizer, config: EncoderConfig) -> None:
        self.net = net.eval()
        self.tokenizer = tokenizer
        self.config = config
        self.precision = resolve_precision(config.precision)
        if self.precision == "fp32" and (
            any(p.dtype == torch.bfloat16 for p in net.parameters())
            or any(isinstance(m, PrepackedBf16Linear) for m in net.modules())
        ):
            raise ModelLoadError(
                "This network's matmul weights were stored in bf16 for a bf16 pipeline; fp32 "
                "inference on them would not be fp32.",
                fix="load the model folder again (Pipeline.from_folder) for an fp32 pipeline",
            )
        configure_threads(config.num_threads)
        self.bf16_attention = resolve_bf16_attention(config.bf16_attention)
        for module in net.modules():
            if isinstance(module, BertSelfAttention):
                module.explicit_bf16 = self.bf16_attention == "explicit"
        self.cls_id = self._special_id("[CLS]")
        self.sep_id = self._special_id("[SEP]")
        self.pad_id = self._special_id("[PAD]")
        self.head_specs = dict(net.head_specs)
        # Set by the pipeline when the model folder has one; scores every sentence piece.
        self.out_of_scope: OutOfScopeDetector | None = None
        # Set by the pipeline when the model folder has one; reads every sentence's middle layers.
        self.signal_head: SignalHead | None = None

    def store_weights_for_precision(self) -> None:
        """On the bf16 path, keep every Linear layer's weights in bf16 instead of casting per call.

        Autocast runs each matmul in bf16 by casting its fp32 weight on every forward pass (about
        10 M values per pass, a noticeable share of a one-message request). Storing the weights
        already rounded to bf16 gives bit-identical arithmetic without that cost. LayerNorm and
        embeddings stay fp32, as autocast would keep them. Where oneDNN can, the weights are also
        prepacked once into its kernel's layout (``runtime.prepack_bf16_linears``), again with
        bit-identical outputs. Only for networks that are no longer trained: call it on a loaded
        model, never on one in training.
        """
        if self.precision != "bf16":
            return
        if prepack_bf16_linears(self.net):
            log.debug("bf16 linear layers prepacked for oneDNN")
            return
        for module in self.net.modules():
            if isinstance(module, nn.Linear):
                module.to(torch.bfloat16)

    def _special_id(self, token: str) -> int:
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"tokenizer has no {token} token")
        return token_id

    def tokenise(self, texts: Sequence[str]) -> list[TokenisedMessage]:
        """Tokenise bodies in one batched call (the Rust tokenizer parallelises it)."""
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        out = []
        for enc in encodings:
            offsets = enc.offsets
            out.append(TokenisedMessage(list(enc.ids), [o[0] for o in offsets], [o[1] for o in offsets]))
        return out

    def plan(
        self, tokens: Sequence[TokenisedMessage], sentences: Sequence[Sequence[tuple[int, int]]]
    ) -> list[Window]:
        """Plan the windows of every message."""
        windows: list[Window] = []
        for index, (toks, sents) in enumerate(zip(tokens, sentences, strict=True)):
            ranges = sentence_token_ranges(toks, sents)
            windows.extend(
                plan_windows(
                    index,
                    len(toks.ids),
                    ranges,
                    self.config.max_window_tokens,
                    self.config.window_overlap_tokens,
                )
            )
        return windows

    def encode(
        self,
        texts: Sequence[str],
        sentences: Sequence[Sequence[tuple[int, int]]],
        *,
        vectors: bool = False,
        out_of_scope: bool = True,
        signals: bool = True,
        signal_features: Sequence[int] = (),
    ) -> list[EncoderOutput]:
        """Score every sentence and message. Windows are sorted by length and batched.

        ``vectors`` also returns each sentence's pooled vector (what the sentence heads read), for
        fitting the out-of-scope detector; routing never needs them. ``out_of_scope=False`` skips
        the detector's distances and ``signals=False`` the signal head, for readings whose intent
        is all that is used. ``signal_features`` returns the pooled states of those layers
        (1-based) per sentence, for fitting a signal head.
        """
        tokens = self.tokenise(texts)
        windows = self.plan(tokens, sentences)
        windows.sort(key=lambda w: w.token_end - w.token_start)
        n_msgs = len(texts)
        sentence_heads = [n for n, s in self.head_specs.items() if s.level == "sentence"]
        has_message_heads = any(s.level == "message" for s in self.head_specs.values())
        piece_logits: dict[str, list[list[tuple[int, np.ndarray]]]] = {
            name: [[] for _ in range(n_msgs)] for name in sentence_heads
        }
        hidden_size = self.net.encoder.settings.hidden_size
        detector = self.out_of_scope
        score_out_of_scope = out_of_scope and detector is not None
        # Per message: (sentence, distance) and (sentence, vector) per piece, when wanted.
        piece_distances: list[list[tuple[int, float]]] = [[] for _ in range(n_msgs)]
        piece_vectors: list[list[tuple[int, np.ndarray]]] = [[] for _ in range(n_msgs)]
        head = self.signal_head if signals else None
        taps = tuple(signal_features) or (head.layers if head is not None else ())
        tap_width = hidden_size * len(taps)
        piece_taps: list[list[tuple[int, np.ndarray]]] = [[] for _ in range(n_msgs)]
        message_sum = torch.zeros(n_msgs, hidden_size)
        message_count = torch.zeros(n_msgs)
        size = self.config.batch_size
        with inference_context(self.precision):
            for offset in range(0, len(windows), size):
                batch = collate(
                    windows[offset : offset + size],
                    tokens,
                    self.cls_id,
                    self.sep_id,
                    self.pad_id,
                    self.config.pad_to_multiple_of,
                )
                t = batch.tensors
                piece_rep, batch_sum, batch_count, batch_taps = self.net.pool(
                    t["input_ids"],
                    t["attention_mask"],
                    t["piece_index"],
                    t["piece_message"],
                    batch.n_messages,
                    taps,
                )
                for name, logits in self.net.head_logits("sentence", piece_rep).items():
                    values = logits.float().numpy()
                    for row, (message, piece) in enumerate(batch.pieces):
                        piece_logits[name][message].append((piece.sentence, values[row]))
                if score_out_of_scope:
                    assert detector is not None
                    distances = detector.distances(piece_rep)
                    for row, (message, piece) in enumerate(batch.pieces):
                        piece_distances[message].append((piece.sentence, float(distances[row])))
                if batch_taps is not None:
                    tapped = batch_taps.numpy()
                    for row, (message, piece) in enumerate(batch.pieces):
                        piece_taps[message].append((piece.sentence, tapped[row]))
                if vectors:
                    reps = piece_rep.float().numpy()
                    for row, (message, piece) in enumerate(batch.pieces):
                        piece_vectors[message].append((piece.sentence, reps[row]))
                if has_message_heads:
                    global_ids = torch.tensor(batch.message_ids, dtype=torch.long)
                    message_sum.index_add_(0, global_ids, batch_sum.float())
                    message_count.index_add_(0, global_ids, batch_count.float())
            message_logits: dict[str, np.ndarray] = {}
            if has_message_heads and n_msgs:
                rep = message_sum / message_count.clamp(min=1.0)[:, None]
                message_logits = {
                    name: logits.float().numpy()
                    for name, logits in self.net.head_logits("message", rep).items()
                }
        present = (message_count > 0).numpy()
        outputs = [
            self._combine(i, len(sentences[i]), piece_logits, message_logits if present[i] else {})
            for i in range(n_msgs)
        ]
        for i, output in enumerate(outputs):
            n = len(sentences[i])
            if score_out_of_scope:
                distance = _mean_per_sentence(n, piece_distances[i])
                output.sentence_out_of_scope = detector.scores(distance)
            if vectors:
                output.sentence_vectors = _mean_per_sentence(n, piece_vectors[i], (hidden_size,))
            if taps:
                features = _mean_per_sentence(n, piece_taps[i], (tap_width,))
                if signal_features:
                    output.sentence_signal_features = features
                if head is not None and not signal_features:
                    output.sentence_signal_probs = head.probabilities(features)
        return outputs

    def _combine(
        self,
        index: int,
        n_sentences: int,
        piece_logits: dict[str, list[list[tuple[int, np.ndarray]]]],
        message_logits: dict[str, np.ndarray],
    ) -> EncoderOutput:
        n = n_sentences
        scored = np.zeros(n, dtype=bool)
        sentence_probs: dict[str, np.ndarray] = {}
        for name, per_message in piece_logits.items():
            spec = self.head_specs[name]
            if spec.kind == "binary":
                best = np.full(n, -np.inf, dtype=np.float64)
                for sentence, logit in per_message[index]:
                    best[sentence] = max(best[sentence], float(logit[0]))  # a long sentence: its best piece
                    scored[sentence] = True
                probs = np.zeros(n, dtype=np.float64)
                probs[scored] = 1.0 / (1.0 + np.exp(-best[scored] / spec.temperature))
            else:
                for sentence, _ in per_message[index]:
                    scored[sentence] = True
                mean_logits = _mean_per_sentence(n, per_message[index], (spec.n_outputs,))
                probs = softmax(mean_logits / spec.temperature)
            sentence_probs[name] = probs
        message_probs = {
            name: softmax(logits[index][None, :] / self.head_specs[name].temperature)[0]
            for name, logits in message_logits.items()
        }
        return EncoderOutput(sentence_probs, message_probs, scored)


def _mean_per_sentence(
    n_sentences: int, pieces: Sequence[tuple[int, np.ndarray | float]], shape: tuple[int, ...] = ()
) -> np.ndarray:
    """Average per-piece values of ``shape`` into per-sentence ones (a long sentence is read in
    pieces); a sentence without pieces gets zeros."""
    sums = np.zeros((n_sentences, *shape), dtype=np.float64)
    counts = np.zeros(n_sentences)
    for sentence, value in pieces:
        sums[sentence] += value
        counts[sentence] += 1
    return sums / np.maximum(counts, 1).reshape(-1, *([1] * len(shape)))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)
