"""The container's health check: does the app on this machine answer its page? Over http, or over https when it
serves TLS (--ssl-certfile): on 127.0.0.1 the certificate's name is not checked, the server being this machine.
Behind --auth-file the login page answers, which is enough.

    python -m app_lib.health         # exit 0 when http(s)://127.0.0.1:$GRADIO_SERVER_PORT/ answers, else 1
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
import urllib.request


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app_lib.health", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--port", default=os.environ.get("GRADIO_SERVER_PORT", "7860"), help="env GRADIO_SERVER_PORT")
    port = parser.parse_args(argv).port
    this_machine = ssl.create_default_context()
    this_machine.check_hostname, this_machine.verify_mode = False, ssl.CERT_NONE
    for url, context in ((f"http://127.0.0.1:{port}/", None), (f"https://127.0.0.1:{port}/", this_machine)):
        try:
            with urllib.request.urlopen(url, timeout=4, context=context):
                return 0
        except OSError:  # refused, reset, not TLS, an HTTP error status: try the other scheme
            continue
    print(f"no answer on port {port} over http or https", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
