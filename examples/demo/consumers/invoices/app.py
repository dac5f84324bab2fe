"""Sample consumer: verifies an invoice token with PyJWT from the shared layer (works on 1.x and 2.x)."""

import jwt

SECRET = "demo-secret"


def handler(event, context):
    token = jwt.encode({"invoice": event.get("invoice", 1)}, SECRET, algorithm="HS256")
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    return {"invoice": claims["invoice"], "jwt": jwt.__version__}
