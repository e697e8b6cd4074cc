"""Who may use the server, checked around the whole app.

- `policy.py`: the rules (`AccessPolicy`: Host names, the admin token and its cookie) and the
  check `serve` runs before it binds;
- `guard.py`: `AccessGuard`, the pure ASGI middleware that enforces them in front of the proxy
  and the web app;
- `login.py`: the `/login` form and its limiter on failed attempts;
- `replies.py`: the ASGI types and the plain answers the other two send.
"""
