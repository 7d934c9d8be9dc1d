import sys

from vgpo_verl.evaluate.cli import main

sys.exit(main())
