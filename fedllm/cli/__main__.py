"""``python -m fedllm.cli``: the ``fedllm`` command."""

import sys

from fedllm.cli import main

sys.exit(main())
