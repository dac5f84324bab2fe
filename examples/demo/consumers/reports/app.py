"""Sample consumer: reports which libraries the shared layer gives it."""

import importlib.metadata


def handler(event, context):
    return {"jwt": importlib.metadata.version("pyjwt")}
