"""Pictures of attention heads: a grid of per-head attention maps.

    from deepdive.heads import plot_attention_grid
    fig = plot_attention_grid(weights, titles=["head 0", ...], row_labels=["hand-set", "random"])

`weights` holds attention weights, one (Tq, Tk) map per head: a tensor of shape (nh, Tq, Tk) for
one row of panels, or (rows, nh, Tq, Tk) for several rows (e.g. two models side by side). Each
row of a map is one query; its entries are the weights it gives to the keys (they sum to 1).
Only plotting lives here; computing the weights is the notebook's job.
"""

import matplotlib.pyplot as plt
import torch


def plot_attention_grid(weights: torch.Tensor, titles=None, row_labels=None, tokens=None, suptitle=None,
                        panel_size: float = 2.3, vmax: float = 1.0):
    """Draw one heatmap per head; returns the matplotlib Figure.

    Args:
        weights: (nh, Tq, Tk) or (rows, nh, Tq, Tk) attention weights (any device or dtype).
        titles: one title per column (head), e.g. ["head 0: previous token", ...].
        row_labels: one label per row, written on the left of the row.
        tokens: optional labels for the positions (used on both axes when Tq == Tk).
        suptitle: a title for the whole figure.
        panel_size: inches per panel.
        vmax: the weight drawn in the brightest colour (weights above it too); lower it to see the
            differences between heads whose weights are all far below 1.
    """
    w = weights.detach().float().cpu()
    if w.dim() == 3:
        w = w[None]
    if w.dim() != 4:
        raise ValueError(f"expected weights of shape (nh, Tq, Tk) or (rows, nh, Tq, Tk), got {tuple(weights.shape)}")
    rows, nh, t_q, t_k = w.shape
    fig, axes = plt.subplots(rows, nh, figsize=(panel_size * nh + 0.8, panel_size * rows + 0.6), squeeze=False)
    image = None
    for r in range(rows):
        for h in range(nh):
            ax = axes[r][h]
            image = ax.imshow(w[r, h], vmin=0.0, vmax=vmax, cmap="viridis")
            if r == 0 and titles is not None:
                ax.set_title(titles[h], fontsize=9)
            if tokens is not None:
                ax.set_xticks(range(t_k), tokens[-t_k:], fontsize=7, rotation=90)
                ax.set_yticks(range(t_q), tokens[-t_q:], fontsize=7)
            else:
                ax.set_xticks([])
                ax.set_yticks([])
            if h == 0:
                ax.set_ylabel(("" if row_labels is None else f"{row_labels[r]}\n") + "query", fontsize=8)
            if r == rows - 1:
                ax.set_xlabel("key", fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.8, label="attention weight")
    if suptitle:
        fig.suptitle(suptitle)
    return fig
