"""Notebook-first research kit for multimodal preference optimization against VLM hallucination (MISP-DPO, mDPO, MIA-DPO, ASPO)

Modules:

- `mmpo_nb.selection`: Outer-product CLIP features, SAE scores, greedy diverse picks of K negative images, the proposal q_φ, and a quantitative check of which latent means which visual error."""

__version__ = "0.0.1"
