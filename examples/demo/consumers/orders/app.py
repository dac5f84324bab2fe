"""Sample consumer: signs an order token with PyJWT from the shared layer.

It uses the PyJWT 1.x API, where `jwt.encode` returns bytes. PyJWT 2 returns str, so a layer that
moves to PyJWT 2 breaks this function: the demo's bad push.
"""

import jwt

SECRET = "demo-secret"


def handler(event, context):
    token = jwt.encode({"order": event.get("order", 1)}, SECRET, algorithm="HS256").decode("ascii")
    return {"token": token, "jwt": jwt.__version__}
