"""Train a Cold Diffusion model: ``python train.py fit --config configs/quickstart.yaml``.

See README.md, and ``python train.py fit --help`` for every option.
"""

from colddiff.cli import cli_main

if __name__ == "__main__":
    cli_main()
