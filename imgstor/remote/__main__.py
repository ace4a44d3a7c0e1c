import sys

from imgstor.remote.node import main

sys.exit(main())
