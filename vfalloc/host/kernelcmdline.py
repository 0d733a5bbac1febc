"""/etc/kernel/cmdline, the kernel command line of systemd-boot / kernel-install hosts and of
Proxmox VE's proxmox-boot-tool: plain words, no shell. kernel-install (systemd 25x,
90-loaderentry.install) reads every word of the file; proxmox-boot-tool (proxmox-kernel-helper,
`get_first_line`) reads only the first line, so new words go at the end of the first line.

Pure text in and out: rootfs reads and writes the file. Edits in place: a word is cut with the
blank before it, new words go after the first line's last word; every other byte stays.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import cmdline, grub

PATH = "/etc/kernel/cmdline"
_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class KernelCmdline:
    file: str
    text: str

    def cmdline_tokens(self) -> list[str]:
        return cmdline.split(self.first_line())

    def first_line(self) -> str:
        return self.text.split("\n", 1)[0]

    def edit(self, add: list[str], cut: list[str]) -> dict[str, str]:
        """{file: new text} when it changes, else {}."""
        line_end = len(self.first_line())
        spans: list[tuple[int, int, str]] = []
        for m in _WORD.finditer(self.text, 0, line_end):
            if m[0] in cut:
                start = m.start()
                while start > 0 and self.text[start - 1] in " \t":
                    start -= 1
                end = m.end() if start > 0 or m.start() > 0 else _skip_blanks(self.text, m.end())
                spans.append((start, end, ""))
        if add:
            last = max((m.end() for m in _WORD.finditer(self.text, 0, line_end)), default=0)
            spans.append((last, last, (" " if last else "") + " ".join(add)))
        if not spans:
            return {}
        text = grub.apply_edits(self.text, spans)
        if "\n" not in text and self.text == "":
            text += "\n"
        return {self.file: text}


def _skip_blanks(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t":
        i += 1
    return i
