"""Files under `--root`: every path a host command reads or writes in /etc goes through RootFS, so
tests run the commands on a scratch tree and `--dry-run` shows a diff instead of writing.

Owns: mapping absolute paths under the root, atomic writes (temp file in the same directory,
fsync, rename: a failed write leaves the old file as it was), removals, and the dry-run output.
Must not: know what the files mean, or touch sysfs (that is vfalloc.sysfs).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from ..atomicfile import write_atomic
from ..errors import HostError, UsageError


@dataclass
class RootFS:
    root: Path
    dry_run: bool = False
    out: TextIO | None = None
    changed: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if not self.root.is_dir():
            raise UsageError(f"--root {self.root} is not a directory")

    def path(self, absolute: str) -> Path:
        """`/etc/x` -> ROOT/etc/x."""
        return self.root / absolute.lstrip("/")

    def shown(self, absolute: str) -> str:
        """How a path is named in messages: as on the target system, with the root if not /."""
        return absolute if self.root == Path("/") else str(self.path(absolute))

    def read(self, absolute: str) -> str | None:
        """The text of a file, or None when it does not exist."""
        path = self.path(absolute)
        try:
            return path.read_text()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise HostError(f"{path}: cannot read ({reason})") from exc

    def glob(self, absolute_dir: str, pattern: str) -> list[str]:
        """Absolute names (as on the target) of files in a directory matching `pattern`, sorted
        the way the shell sorts a glob (the order grub-mkconfig sources grub.d/*.cfg in)."""
        base = self.path(absolute_dir)
        if not base.is_dir():
            return []
        names = sorted(p.name for p in base.glob(pattern) if p.is_file())
        return [f"{absolute_dir.rstrip('/')}/{name}" for name in names]

    def exists(self, absolute: str) -> bool:
        return self.path(absolute).exists() or self.path(absolute).is_symlink()

    def write(self, absolute: str, text: str, mode: int = 0o644) -> bool:
        """Write `text` unless the file already holds it; returns whether it changed."""
        old = self.read(absolute)
        if old == text:
            return False
        self.changed.append(absolute)
        if self.dry_run:
            self._diff(absolute, old, text)
            return True
        self._atomic_write(self.path(absolute), text, mode)
        return True

    def remove(self, absolute: str) -> bool:
        path = self.path(absolute)
        if not (path.exists() or path.is_symlink()):
            return False
        self.changed.append(absolute)
        if self.dry_run:
            self._say(f"would remove {self.shown(absolute)}")
            return True
        try:
            path.unlink()
        except OSError as exc:
            raise HostError(f"{path}: cannot remove ({exc.strerror})") from exc
        return True

    def _diff(self, absolute: str, old: str | None, new: str) -> None:
        before = (old or "").splitlines(keepends=True)
        after = new.splitlines(keepends=True)
        label = self.shown(absolute)
        diff = difflib.unified_diff(before, after, "/dev/null" if old is None else label, label)
        for line in diff:
            self._say(line.rstrip("\n"))

    def _atomic_write(self, path: Path, text: str, mode: int) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists():
                mode = path.stat().st_mode & 0o7777
            write_atomic(str(path), text.encode(), mode)
        except OSError as exc:
            raise HostError(f"{path}: cannot write ({exc.strerror})") from exc

    def _say(self, line: str) -> None:
        if self.out is not None:
            print(line, file=self.out)
