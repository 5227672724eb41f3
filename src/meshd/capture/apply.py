"""Apply meshd's nat rules with iptables-save/iptables-restore: the one module here that runs a process."""

from __future__ import annotations

import subprocess

from meshd.capture.restore import merge_nat


class CaptureApplyError(RuntimeError):
    """iptables is missing, not permitted, or refused the rules; the message says which and what to do."""


def apply_nat(
    ours: list[str], *, iptables_save: str = "iptables-save", iptables_restore: str = "iptables-restore"
) -> str:
    """Replace meshd's chains in the nat table (keeping every other rule) atomically; returns what was restored."""
    saved = _run([iptables_save, "-t", "nat"], stdin=None)
    text = merge_nat(saved, ours)
    _run([iptables_restore], stdin=text)
    return text


def _run(argv: list[str], *, stdin: str | None) -> str:
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False, timeout=30)
    except FileNotFoundError:
        raise CaptureApplyError(
            f"{argv[0]} not found: install iptables (Debian/Ubuntu: apt-get install iptables)"
        ) from None
    except PermissionError as exc:
        raise CaptureApplyError(f"{argv[0]} cannot be run: {exc}") from None
    if done.returncode != 0:
        err = done.stderr.strip() or done.stdout.strip()
        lowered = err.lower()
        if "permission denied" in lowered or "must be root" in lowered or "operation not permitted" in lowered:
            raise CaptureApplyError(f"{argv[0]} not permitted ({err}): run as root or with the NET_ADMIN capability")
        raise CaptureApplyError(f"{argv[0]} failed with exit code {done.returncode}: {err}")
    return done.stdout
