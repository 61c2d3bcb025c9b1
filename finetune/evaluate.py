"""`python -m finetune.evaluate` is now `python -m evaluation` (same options). This alias stays for one release."""

import os
import sys

if __name__ == "__main__":
    print("note: `python -m finetune.evaluate` is now `python -m evaluation`; running that", file=sys.stderr)
    # exec, not import: the training part does not depend on the evaluation part
    os.execv(sys.executable, [sys.executable, "-m", "evaluation", *sys.argv[1:]])
