"""AltDiffusion: text-to-image diffusion conditioned on the multilingual AltCLIP text tower.

Import the pipeline from :mod:`diffusion.pipeline_alt_diffusion` (it imports diffusers, which the
search and training commands do not need)."""
