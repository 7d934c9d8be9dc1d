import sys

from vgpo_verl.doctor import main

sys.exit(main())
