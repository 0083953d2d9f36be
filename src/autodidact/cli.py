"""Command-line helpers for the thin Hydra entry points (``evolve.py``).

People type questions the way people type: ``query="Who was Brindlemark's first mayor, and when?"``.
Hydra's override grammar rejects apostrophes, commas, quotes, ``=`` and non-ASCII in an unquoted
value, so before ``hydra.main`` runs, ``rewrite_argv`` turns each ``query=...`` into a single-quoted
Hydra string that parses back to exactly what was typed. It also refuses API keys on the command
line: Hydra would save them in ``.hydra/overrides.yaml`` and the run log.
"""

from __future__ import annotations

import re

from autodidact.errors import ConfigError

QUOTED_KEYS = ("query",)
"""Override keys whose values are free text typed by a person."""
_KEY_OVERRIDE = re.compile(r"^\+{0,2}teacher\.(openai|anthropic)\.api_key=(.*)$", re.DOTALL)


def quote_hydra_value(text: str) -> str:
    r"""``text`` as a single-quoted Hydra value that parses back to ``text`` itself.

    Hydra un-escapes backslashes only where they precede a quote or the closing quote, so those runs
    are doubled and each ``'`` gets one more; OmegaConf would resolve ``${...}`` inside the string,
    so ``${`` is escaped as ``\${`` (doubling any backslashes before it for the same reason).
    """
    text = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", text)
    text = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    text = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, text)
    return f"'{text}'"


def _is_quoted(value: str) -> bool:
    """Whether the value is already a Hydra-quoted string (someone followed Hydra's docs)."""
    if len(value) < 2 or value[0] not in "'\"" or value[-1] != value[0]:
        return False
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        OverridesParser.create().parse_override(f"k={value}")
    except Exception:  # not valid Hydra: treat it as plain text  # noqa: BLE001
        return False
    return True


def rewrite_argv(argv: list[str]) -> list[str]:
    """Quote free-text overrides (``query=...``) and refuse API keys; other arguments pass unchanged."""
    out = []
    for arg in argv:
        key_match = _KEY_OVERRIDE.match(arg)
        if key_match and key_match.group(2) not in ("", "null") and not key_match.group(2).startswith("${"):
            name = key_match.group(1)
            raise ConfigError(
                f"do not pass teacher.{name}.api_key on the command line: Hydra saves overrides in the "
                f"run directory and its log. Export {name.upper()}_API_KEY in the environment instead."
            )
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+") in QUOTED_KEYS and not _is_quoted(value):
            arg = f"{key}={quote_hydra_value(value)}"
        out.append(arg)
    return out
