"""`providers:` entries from a pi coding agent's `models.json` (badlogic/pi-mono).

pi keeps custom providers in `~/.pi/agent/models.json` (`$PI_CODING_AGENT_DIR/models.json`):

```json
{"providers": {"my-api": {"baseUrl": "https://api.example.com/v1", "api": "openai-completions",
                          "apiKey": "$OPENAI_API_KEY", "models": [{"id": "my-model", ...}]}}}
```

`api` is the wire protocol (`openai-completions`, `openai-responses`, `anthropic-messages`,
`google-generative-ai`, ...); `apiKey` is an environment variable (`$VAR`, `${VAR}`, or a bare
upper-case name), a shell command (`!cmd`) or a literal key. llmbudget's config names keys by
environment variable only, so a command or a literal key becomes a comment telling the user
what to do; the key itself is never printed.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import NotFound, ValidationError

_ENV_REF = re.compile(r"^\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?$")
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


@dataclass(slots=True)
class PiProvider:
    """One `providers:` entry (or the reason there is none)."""

    name: str
    kind: str | None
    base_url: str | None = None
    api_key_env: str | None = None
    model: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, str | None]:
        d: dict[str, str | None] = {"name": self.name, "kind": self.kind}
        for k in ("base_url", "api_key_env", "model"):
            if getattr(self, k):
                d[k] = getattr(self, k)
        return d


def default_path(env: dict[str, str] | None = None) -> Path:
    """`$PI_CODING_AGENT_DIR/models.json`, else `~/.pi/agent/models.json`."""
    env = dict(os.environ) if env is None else env
    base = Path(env["PI_CODING_AGENT_DIR"]).expanduser() if env.get("PI_CODING_AGENT_DIR") else None
    return (base or Path.home() / ".pi" / "agent") / "models.json"


def _kind(api: str, host: str) -> str | None:
    if api.startswith("anthropic"):
        return "anthropic-api"
    if api.startswith("google-generative") or api == "google-gemini":
        return "gemini"
    if api.startswith(("openai", "azure-openai")):
        if host.endswith("openrouter.ai"):
            return "openrouter"
        if host.endswith("api.x.ai"):
            return "xai"
        return "openai"
    return None


def _name(raw: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.@-]+", "-", raw).strip("-._@") or "pi"
    return name if name[0].isalnum() else f"pi-{name}"


def read_pi_providers(path: Path) -> list[PiProvider]:
    """The providers of a pi `models.json`, in file order."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotFound(
            f"{path}: no such file; pi keeps custom providers in ~/.pi/agent/models.json"
        ) from None
    except OSError as e:
        raise NotFound(f"{path}: cannot read: {e.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValidationError(
            str(path), f"not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})"
        ) from None
    providers = data.get("providers") if isinstance(data, dict) else None
    if not isinstance(providers, dict):
        raise ValidationError(f"{path}: providers", "must be an object of providers by name")
    out: list[PiProvider] = []
    for raw_name, p in providers.items():
        name = _name(str(raw_name))
        if not isinstance(p, dict):
            out.append(PiProvider(name, None, notes=[f"{raw_name}: not an object; skipped"]))
            continue
        api = str(p.get("api") or "")
        base_url = p.get("baseUrl") if isinstance(p.get("baseUrl"), str) else None
        host = (urlsplit(base_url).hostname or "") if base_url else ""
        kind = _kind(api, host)
        entry = PiProvider(name, kind, base_url=base_url.rstrip("/") if base_url else None)
        if kind is None:
            entry.notes.append(f"{raw_name}: api {api or '(none)'!r} is not one llmbudget can probe; skipped")
        elif host in ("localhost", "127.0.0.1", "::1", "0.0.0.0") or host.endswith(".local"):
            entry.kind = None
            entry.notes.append(f"{raw_name}: a local server ({host}) has no quota to watch; skipped")
        models = p.get("models")
        if isinstance(models, list):
            ids = [m.get("id") for m in models if isinstance(m, dict) and isinstance(m.get("id"), str)]
            if ids:
                entry.model = ids[0]
        key = p.get("apiKey")
        if isinstance(key, str) and key.strip():
            key = key.strip()
            m = _ENV_REF.match(key)
            if m:
                entry.api_key_env = m.group(1)
            elif _ENV_NAME.match(key):
                entry.api_key_env = key
            elif key.startswith("!"):
                entry.notes.append(
                    f"{raw_name}: pi runs a command for this key; put the key in an environment "
                    f"variable and set api_key_env to its name"
                )
            else:
                entry.notes.append(
                    f"{raw_name}: models.json holds this key literally; move it to an environment "
                    f'variable (and use "apiKey": "$NAME" in pi too), then set api_key_env to its name'
                )
        elif entry.kind is not None:
            entry.notes.append(
                f"{raw_name}: no apiKey in models.json; set api_key_env to the variable holding it"
            )
        out.append(entry)
    return out


def providers_yaml(entries: list[PiProvider], source: Path) -> str:
    """The `providers:` block to paste into llmbudget.yaml; comments say what needs a hand."""
    lines = [f"# from {source}", "providers:"]
    shown = 0
    for e in entries:
        lines.extend(f"  # {note}" for note in e.notes)
        if e.kind is None:
            continue
        parts = [f"name: {e.name}", f"kind: {e.kind}"]
        if e.base_url:
            parts.append(f"base_url: {json.dumps(e.base_url)}")
        if e.api_key_env:
            parts.append(f"api_key_env: {e.api_key_env}")
        if e.model:
            parts.append(f"model: {json.dumps(e.model)}")
        lines.append(f"  - {{{', '.join(parts)}}}")
        shown += 1
    if not shown:
        lines[1] = "providers: []"
    return "\n".join(lines) + "\n"
