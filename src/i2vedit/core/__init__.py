"""The model-side maths every stage shares: SVD's EDM conditioning, preconditioning, Euler step
and VAE/CLIP codecs (``edm``), and peft LoRA injection, loading and switching (``lora``).
Sampling, inversion and training all sit above this package and never import each other."""
