import sys

from lightning_tricks.commands.cli import main

sys.exit(main())
