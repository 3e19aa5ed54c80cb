"""The README's JavaScript example, as the page of a server, for ``test_readme_js.py``.

The page is the README's ```js block as written, after a classic script that
records ``console.log`` calls (in ``window.logged``) and sets the ``user`` cookie
from ``?user=``: the example connects to ``/ws/chat`` with no credentials of its
own, as a page behind a login would, and the cookie is that login here.
"""

from __future__ import annotations

import re
from pathlib import Path

from starlette.applications import Starlette

from megapresence_anyio import (
    HandshakeRequest,
    Identity,
    PresenceServer,
    Refusal,
    handle_command,
)
from megapresence_core import PresenceConfig

README = Path(__file__).resolve().parents[1] / "README.md"
(EXAMPLE,) = re.findall(r"^```js\n(.*?)^```$", README.read_text(), re.M | re.S)

PAGE = f"""<!doctype html><meta charset="utf-8"><title>the README's example</title>
<script>
window.logged = [];
const log = console.log.bind(console);
console.log = (...args) => {{ window.logged.push(args.map(String).join(" ")); log(...args); }};
document.cookie = "user=" + new URLSearchParams(location.search).get("user") + "; path=/";
</script>
<script type="module">
{EXAMPLE}
</script>
"""


def authenticate(request: HandshakeRequest) -> Identity | Refusal:
    cookie = request.header("cookie") or ""
    user = dict(p.strip().partition("=")[::2] for p in cookie.split(";")).get("user")
    if not user:
        return Refusal(status=401, reason="log in first")
    return Identity(user_id=user, session_id=f"{user}-1", channels=("lobby",))


server = PresenceServer(
    authenticate,
    paths=("/ws/",),
    on_message=handle_command,  # the browser protocol
    pages={"/": ("text/html; charset=utf-8", PAGE.encode())},
    presence=PresenceConfig(leave_grace=0),  # a page that goes leaves at once here
)
app = server.asgi(Starlette())
