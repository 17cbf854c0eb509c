"""Pure-torch PSLD (Rout et al., NeurIPS 2023, arXiv 2307.00619): operators, losses and the sampler. Never imports comfy."""
