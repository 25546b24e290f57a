"""Verifies one webhook delivery with the Standard Webhooks reference library.

Usage: WEBHOOK_SECRET=whsec_... WEBHOOK_ID=... WEBHOOK_TIMESTAMP=... WEBHOOK_SIGNATURE=... \
       python3 tests/webhooks_verify.py BODY_FILE

Prints the event type and exits 0 when the signature verifies; exits 1 with the library's
error otherwise. Driven by tests/it/webhooks.rs.
"""

import json
import os
import sys

from standardwebhooks.webhooks import Webhook


def main() -> int:
    with open(sys.argv[1], "rb") as f:
        body = f.read()
    headers = {
        "webhook-id": os.environ["WEBHOOK_ID"],
        "webhook-timestamp": os.environ["WEBHOOK_TIMESTAMP"],
        "webhook-signature": os.environ["WEBHOOK_SIGNATURE"],
    }
    try:
        event = Webhook(os.environ["WEBHOOK_SECRET"]).verify(body, headers)
    except Exception as e:  # the library raises WebhookVerificationError
        print(f"refused: {e!r}")
        return 1
    print(json.dumps({"verified": True, "type": event["type"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
