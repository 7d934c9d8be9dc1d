import sys

from vgpo_verl.data.cli import main

sys.exit(main())
