"""colddiff: Cold Diffusion generative models (Bansal et al., 2022, arXiv 2208.09392).

Light to import: ``colddiff.degradations``, ``colddiff.sampling`` and ``colddiff.schedules`` need only torch.
The training stack (``colddiff.module``, ``colddiff.data``, ``colddiff.cli``) imports Lightning.
"""

__version__ = "0.1.0"
