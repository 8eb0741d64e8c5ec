"""The agent's first line: token, protocol and upload size, checked on the raw ASGI request before any body
is read, so an unauthenticated or oversized upload costs the agent nothing."""

import secrets

from edgeopt.remote import PROTOCOL_HEADER, PROTOCOL_VERSION


class TooLarge(Exception):
    pass


def json_response(status: int, body: dict):
    from starlette.responses import JSONResponse

    return JSONResponse(body, status_code=status)


class Guard:
    """Token, protocol and size checks before the body is read, so an unauthenticated or oversized
    upload costs the agent nothing."""

    def __init__(self, app, config):
        self.app, self.config = app, config
        self.expected = f"Bearer {config.token}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        if not secrets.compare_digest(headers.get("authorization", b""), self.expected):
            return await json_response(401, {"error": "missing or wrong token"})(scope, receive, send)
        proto = headers.get(PROTOCOL_HEADER.lower(), b"").decode("latin-1")
        if proto != str(PROTOCOL_VERSION):
            return await json_response(409, {
                "error": f"protocol mismatch: this agent speaks protocol {PROTOCOL_VERSION}, the client "
                         f"{proto or 'none'}; install the same edgeopt version on both sides",
                "protocol": PROTOCOL_VERSION})(scope, receive, send)
        limit = self.config.max_upload_bytes
        try:
            declared = int(headers.get("content-length", b"0") or 0)
        except ValueError:
            declared = 0
        if declared > limit:
            return await self._too_large(scope, receive, send)
        seen, started = 0, False

        async def counting_receive():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise TooLarge
            return msg

        async def tracking_send(msg):
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except TooLarge:
            if not started:
                await self._too_large(scope, receive, send)

    async def _too_large(self, scope, receive, send):
        mb = self.config.max_upload_bytes / 2**20
        await json_response(413, {"error": f"upload larger than this agent's limit of {mb:.1f} MB "
                                            "(agent option --max-upload-mb)"})(scope, receive, send)
