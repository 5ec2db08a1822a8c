import sys

from motionstreamer.cli import main

sys.exit(main())
