import sys

from migrator.commands.main import main

sys.exit(main())
