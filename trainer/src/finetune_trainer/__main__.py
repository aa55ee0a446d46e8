import sys

from finetune_trainer.cli import main

sys.exit(main())
