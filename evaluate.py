"""Evaluate a Cold Diffusion model: ``python evaluate.py {restoration,generation,replication} ...``.

``python evaluate.py MODE --help`` lists the options; README.md describes the protocols.
"""

from colddiff.evaluate_cli import main

if __name__ == "__main__":
    main()
