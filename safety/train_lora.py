"""The LoRA variant of the crisis head: LoRA on the top encoder layers, trained with the head.

    window ids -> embeddings + layers[:L-k]  (frozen: run once, their outputs cached)
               -> layers[L-k:] with LoRALinear on q, k, v, out, up, down   (trained)
               -> mean pool -> L2 norm -> logistic crisis head -> max over the item's windows

Only the top k layers run per step, so an epoch costs about k/L of one frozen encoding pass
times three (forward and backward). The saved tensors are the LoRA pairs ("lora.layers.5.attn.q
.lora_A", ...) beside the head; classifier.merge_lora folds them into the weights at load, so
the shipped classifier runs exactly as fast as the frozen one.
"""

import copy
import sys

import torch
import torch.nn.functional as F
from tqdm import tqdm

from lora.layer import LoRALinear

from .classifier import (CrisisClassifier, HeadConfig, category_logits, crisis_logits, mean_pool,
                         merge_lora, pad)
from .categories import RISK_CATEGORIES

TARGETS = ("attn.q", "attn.k", "attn.v", "attn.out", "mlp.up", "mlp.down")
BATCH_ITEMS = 16
LR_LORA, LR_HEAD = 1e-3, 1e-2


class LoraTrainer:
    def __init__(self, encoder: CrisisClassifier, items, cfg):
        self.bert, self.tok, self.cfg, self.items = encoder.bert, encoder.tokenizer, cfg, items
        n_layers = len(self.bert.layers)
        if not 1 <= cfg.lora_layers <= n_layers:
            raise SystemExit(f"error: --lora-layers {cfg.lora_layers} must be in 1..{n_layers}")
        self.first = n_layers - cfg.lora_layers       # first tuned layer
        self.scale = 2.0                               # alpha = 2 r, as HeadConfig records
        self.windows: list[torch.Tensor] = []          # hidden (T_w, dim) entering layer `first`
        self.per_item: list[list[int]] = []
        tok = encoder.tokenizer
        ids = []
        for it in items:
            w = tok.windows(it.text, encoder.cfg.window, encoder.cfg.overlap)
            self.per_item.append(list(range(len(ids), len(ids) + len(w))))
            ids += w
        self.windows = [None] * len(ids)
        order = sorted(range(len(ids)), key=lambda j: -len(ids[j]))
        with torch.inference_mode():
            for start in tqdm(range(0, len(order), 32), desc="lora: caching frozen layers",
                              disable=not cfg.progress, file=sys.stderr):
                idx = order[start:start + 32]
                x_ids, mask = pad([ids[j] for j in idx], tok.pad_id)
                key_mask = mask.bool()[:, None, None, :]                     # (B, 1, 1, T)
                x = self.bert.embeddings(x_ids)
                for layer in self.bert.layers[:self.first]:
                    x = layer(x, key_mask)                                   # (B, T, dim)
                for j, row, m in zip(idx, x, mask):
                    self.windows[j] = row[:int(m.sum())].clone()             # (T_w, dim)

    # ------------------------------------------------------------------ the tuned top
    def _top(self, lora: dict | None):
        """A copy of the top layers with fresh (lora None) or saved LoRA pairs in them."""
        top = copy.deepcopy(self.bert.layers[self.first:]).requires_grad_(False)
        for i, layer in enumerate(top):
            for name in TARGETS:
                parent, child = name.split(".")
                base = getattr(getattr(layer, parent), child)
                wrapped = LoRALinear(base, self.cfg.lora_r, self.scale * self.cfg.lora_r)
                if lora is not None:
                    key = f"lora.layers.{self.first + i}.{name}"
                    wrapped.lora_A.data.copy_(lora[f"{key}.lora_A"])
                    wrapped.lora_B.data.copy_(lora[f"{key}.lora_B"])
                setattr(getattr(layer, parent), child, wrapped)
        return top

    def _embed(self, top, window_ids: list[int]) -> torch.Tensor:
        """(n, dim) unit vectors of these windows through the tuned top layers."""
        rows = [self.windows[j] for j in window_ids]
        T = max(r.shape[0] for r in rows)
        x = torch.zeros(len(rows), T, rows[0].shape[1])
        mask = torch.zeros(len(rows), T, dtype=torch.long)
        for i, r in enumerate(rows):
            x[i, :r.shape[0]] = r
            mask[i, :r.shape[0]] = 1
        key_mask = mask.bool()[:, None, None, :]
        for layer in top:
            x = layer(x, key_mask)
        return mean_pool(x, mask)

    def _window_scores(self, top, head, rows) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """Every window of these items: ids, unit vectors (n, dim), crisis logits (n,)."""
        wids = [j for r in rows for j in self.per_item[r]]
        with torch.no_grad():
            order = sorted(range(len(wids)), key=lambda k: -self.windows[wids[k]].shape[0])
            out = torch.empty(len(wids), self.windows[0].shape[1])
            for start in range(0, len(order), 32):
                part = order[start:start + 32]
                out[part] = self._embed(top, [wids[k] for k in part])
        return wids, out, crisis_logits(head, out)

    # ------------------------------------------------------------------ training and scoring
    def fit(self, rows: list[int]) -> dict:
        torch.manual_seed(self.cfg.seed)               # LoRA A's initialisation
        gen = torch.Generator().manual_seed(self.cfg.seed)
        top = self._top(None)
        dim = self.windows[0].shape[1]
        head = {"crisis.out.weight": torch.zeros(1, dim, requires_grad=True),
                "crisis.out.bias": torch.zeros(1, requires_grad=True)}
        lora_params = [p for m in top.modules() if isinstance(m, LoRALinear)
                       for p in (m.lora_A, m.lora_B)]
        opt = torch.optim.Adam([{"params": lora_params, "lr": LR_LORA},
                                {"params": list(head.values()), "lr": LR_HEAD}])
        steps = self.cfg.lora_epochs * -(-len(rows) // BATCH_ITEMS)
        bar = tqdm(total=steps, desc="lora: training", disable=not self.cfg.progress,
                   file=sys.stderr, leave=False)
        for _ in range(self.cfg.lora_epochs):
            for batch in self._batches(rows, gen):
                wids = [j for r in batch for j in self.per_item[r]]
                owner = torch.tensor([b for b, r in enumerate(batch) for _ in self.per_item[r]])
                logits = crisis_logits(head, self._embed(top, wids))        # (n_windows,)
                per_item = torch.full((len(batch), len(wids)), float("-inf"))
                per_item[owner, torch.arange(len(wids))] = 0.0
                item_logit = (per_item + logits[None, :]).max(dim=1).values  # (B,)
                y = torch.tensor([float(self.items[r].y) for r in batch])
                loss = F.binary_cross_entropy_with_logits(item_logit, y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                bar.update(1)
        bar.close()
        out = {k: v.detach().clone() for k, v in head.items()}
        for i, layer in enumerate(top):
            for name in TARGETS:
                m = getattr(getattr(layer, name.split(".")[0]), name.split(".")[1])
                out[f"lora.layers.{self.first + i}.{name}.lora_A"] = m.lora_A.detach().clone()
                out[f"lora.layers.{self.first + i}.{name}.lora_B"] = m.lora_B.detach().clone()
        out.update(self._category_head(top, out, rows))
        return {k: v.contiguous() for k, v in out.items()}

    def _batches(self, rows: list[int], gen: torch.Generator) -> list[list[int]]:
        """Shuffled batches of items; within each run of 8 batches the items are sorted by
        length first, so a batch's windows are alike in length and little goes to padding."""
        perm = [rows[k] for k in torch.randperm(len(rows), generator=gen).tolist()]
        length = {r: max(self.windows[j].shape[0] for j in self.per_item[r]) for r in rows}
        batches = []
        for start in range(0, len(perm), 8 * BATCH_ITEMS):
            run = sorted(perm[start:start + 8 * BATCH_ITEMS], key=lambda r: length[r])
            batches += [run[k:k + BATCH_ITEMS] for k in range(0, len(run), BATCH_ITEMS)]
        order = torch.randperm(len(batches), generator=gen).tolist()
        return [batches[k] for k in order]

    def _category_head(self, top, head, rows) -> dict:
        """Softmax regression on each labelled crisis item's highest window (tuned vectors)."""
        dim = self.windows[0].shape[1]
        weight = torch.zeros(len(RISK_CATEGORIES), dim, requires_grad=True)
        bias = torch.zeros(len(RISK_CATEGORIES), requires_grad=True)
        labelled = [r for r in rows if self.items[r].category_index >= 0]
        if labelled:
            wids, embs, logits = self._window_scores(top, head, labelled)
            pos = {j: k for k, j in enumerate(wids)}
            best = [max(self.per_item[r], key=lambda j: float(logits[pos[j]])) for r in labelled]
            emb = embs[torch.tensor([pos[j] for j in best])]
            target = torch.tensor([self.items[r].category_index for r in labelled])
            opt = torch.optim.Adam([weight, bias], lr=self.cfg.lr)
            params = {"category.weight": weight, "category.bias": bias}
            for _ in range(self.cfg.steps):
                loss = F.cross_entropy(category_logits(params, emb), target) + \
                    self.cfg.weight_decay * (weight ** 2).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
        return {"category.weight": weight.detach().clone(), "category.bias": bias.detach().clone()}

    def scores(self, head: dict, rows: list[int]) -> list[float]:
        top = self._top(head)
        wids, _, logits = self._window_scores(top, head, rows)
        pos = {j: k for k, j in enumerate(wids)}
        return [float(torch.sigmoid(max(logits[pos[j]] for j in self.per_item[r]))) for r in rows]

    def classifier(self, head: dict, cfg: HeadConfig) -> CrisisClassifier:
        """A classifier with the LoRA pairs merged into a copy of the encoder, as loaded."""
        bert = copy.deepcopy(self.bert)
        merge_lora(bert, head, cfg)
        return CrisisClassifier(bert, self.tok, head, cfg)
