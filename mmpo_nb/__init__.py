"""Notebook-first research kit for multimodal preference optimization against VLM hallucination (MISP-DPO, mDPO, MIA-DPO, ASPO)

Modules:

- `mmpo_nb.selection`: Outer-product CLIP features, SAE scores, greedy diverse picks of K negative images, the proposal q_φ, and a quantitative check of which latent means which visual error.
- `mmpo_nb.viz`: Plain matplotlib views of the SAE, MISP selection, ASPO weights and preference training: they work in scripts, in the HTML docs, and are what `mmpo_nb.widgets` composes into live widgets.
- `mmpo_nb.widgets`: Live views for JupyterLab: the SAE latent browser, the negative-diversity map, ASPO sentence weights, a training dashboard that follows a running trainer, and MISP's preference distribution; each composes figures from `mmpo_nb.viz`."""

__version__ = "0.0.1"
