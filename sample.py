"""Sample from a trained Cold Diffusion model: ``python sample.py MODE --ckpt PATH``.

Modes: reconstruct, restore, generate, trajectory; ``python sample.py MODE --help`` for the options.
"""

from colddiff.sample_cli import main

if __name__ == "__main__":
    main()
