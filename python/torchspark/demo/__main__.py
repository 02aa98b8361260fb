import sys

from torchspark.demo import main

sys.exit(main())
