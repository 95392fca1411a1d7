"""``python -m sde_diffusion ...`` runs the ``sde-diffusion`` command (also under torchrun)."""

import sys

from .commands.cli import main

sys.exit(main())
