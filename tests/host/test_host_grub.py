"""vfalloc.host.grub and boot_config.plan: shell evaluation of GRUB_CMDLINE_LINUX and in-place,
idempotent edits of grub files as admins and distributions write them."""

from __future__ import annotations

import io

import pytest

from vfalloc.errors import HostError
from vfalloc.host import boot_config, bootsetup, grub
from vfalloc.host.grub import Grub, GrubError
from vfalloc.host.kernelcmdline import PATH, KernelCmdline

INTEL = ["intel_iommu=on", "iommu=pt"]
MAIN, D = grub.MAIN, grub.DROPIN_DIR


@pytest.mark.parametrize("raw, env, value", [
    ('"quiet splash"', {}, "quiet splash"),
    ("'quiet splash'", {}, "quiet splash"),
    ("quiet", {}, "quiet"),
    ('""', {}, ""),
    ("", {}, ""),
    ("\"a\"'b'c", {}, "abc"),
    ('"$GRUB_CMDLINE_LINUX x"', {"GRUB_CMDLINE_LINUX": "prev"}, "prev x"),
    ('"${GRUB_CMDLINE_LINUX} x"', {"GRUB_CMDLINE_LINUX": "prev"}, "prev x"),
    ('"$UNSET x"', {}, " x"),
    ('"a \\"b c\\""', {}, 'a "b c"'),
    ('"a\\b"', {}, "a\\b"),
    ("'$X'", {"X": "no"}, "$X"),
    ('"cost $5"', {}, "cost $5"),
], ids=["double", "single", "unquoted", "empty-quotes", "empty", "concatenated", "self-reference",
        "braced", "unset-var", "escaped-quotes", "backslash-kept", "single-no-expansion", "dollar-digit"])
def test_evaluate_like_sh(raw, env, value):
    assert grub.evaluate(raw, env, "f:1") == value


@pytest.mark.parametrize("raw, problem", [
    ('"$(cat /etc/cmdline)"', "$(...)"),
    ('"`cat /etc/cmdline`"', "backquote"),
    ('"${X:-quiet}"', "does not evaluate"),
], ids=["command-substitution", "backquotes", "default-expansion"])
def test_evaluate_refuses_what_it_cannot_know(raw, problem):
    with pytest.raises(GrubError) as err:
        grub.evaluate(raw, {}, "/etc/default/grub:3")
    assert problem in str(err.value) and "/etc/default/grub:3" in str(err.value)


def test_unterminated_quote_names_the_line():
    with pytest.raises(GrubError, match=r"/etc/default/grub:2: unterminated \" quote"):
        Grub.parse({MAIN: 'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX="quiet\n'})


def test_tokens_spans_and_literals():
    raw = '"quiet $EXTRA a=\\"b\\" console=ttyS0,115200"'
    toks = grub.tokens(raw)
    assert [(t.text, t.literal) for t in toks] == [
        ("quiet", True), ("$EXTRA", False), ('a=\\"b\\', False), ("console=ttyS0,115200", True)]
    assert all(raw[t.start:t.end] == t.text for t in toks)


# (name, files before, wanted, files after): after=None means "no change".
CASES = [
    ("debian-default", {MAIN: 'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX=""\n'},
     INTEL, {MAIN: 'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX="intel_iommu=on iommu=pt"\n'}),
    ("single-quotes", {MAIN: "GRUB_CMDLINE_LINUX='console=ttyS0,115200n8 quiet'\n"},
     INTEL, {MAIN: "GRUB_CMDLINE_LINUX='console=ttyS0,115200n8 quiet intel_iommu=on iommu=pt'\n"}),
    ("unquoted", {MAIN: "GRUB_CMDLINE_LINUX=quiet\n"},
     INTEL, {MAIN: 'GRUB_CMDLINE_LINUX="quiet intel_iommu=on iommu=pt"\n'}),
    ("export-and-comment", {MAIN: 'export GRUB_CMDLINE_LINUX="rd.lvm.lv=vg/root"  # keep "this"\n'},
     INTEL, {MAIN: 'export GRUB_CMDLINE_LINUX="rd.lvm.lv=vg/root intel_iommu=on iommu=pt"  # keep "this"\n'}),
    ("mixed-quotes", {MAIN: "GRUB_CMDLINE_LINUX=\"a b\"' c'\n"},
     INTEL, {MAIN: "GRUB_CMDLINE_LINUX=\"a b\"' c intel_iommu=on iommu=pt'\n"}),
    ("trailing-space", {MAIN: 'GRUB_CMDLINE_LINUX="quiet "\n'},
     INTEL, {MAIN: 'GRUB_CMDLINE_LINUX="quiet intel_iommu=on iommu=pt"\n'}),
    ("escaped-quote-inside", {MAIN: 'GRUB_CMDLINE_LINUX="dyndbg=\\"file x +p\\""\n'},
     ["iommu=pt"], {MAIN: 'GRUB_CMDLINE_LINUX="dyndbg=\\"file x +p\\" iommu=pt"\n'}),
    ("multi-line-value", {MAIN: 'GRUB_CMDLINE_LINUX="quiet\n    splash"\nGRUB_TIMEOUT=5\n'},
     ["iommu=pt"], {MAIN: 'GRUB_CMDLINE_LINUX="quiet\n    splash iommu=pt"\nGRUB_TIMEOUT=5\n'}),
    ("already-present", {MAIN: 'GRUB_CMDLINE_LINUX="intel_iommu=on iommu=pt"\n'}, INTEL, None),
    ("present-in-default", {MAIN: 'GRUB_CMDLINE_LINUX_DEFAULT="quiet intel_iommu=on"\nGRUB_CMDLINE_LINUX=""\n'},
     INTEL, {MAIN: 'GRUB_CMDLINE_LINUX_DEFAULT="quiet intel_iommu=on"\nGRUB_CMDLINE_LINUX="iommu=pt"\n'}),
    ("comma-options", {MAIN: 'GRUB_CMDLINE_LINUX="intel_iommu=on,sm_on iommu=pt"\n'}, INTEL, None),
    ("undoing-arg-replaced", {MAIN: 'GRUB_CMDLINE_LINUX="intel_iommu=off quiet iommu=nopt"\n'},
     INTEL, {MAIN: 'GRUB_CMDLINE_LINUX="quiet intel_iommu=on iommu=pt"\n'}),
    ("commented-out", {MAIN: '#GRUB_CMDLINE_LINUX="intel_iommu=on"\nGRUB_CMDLINE_LINUX="quiet"\n'},
     ["intel_iommu=on"], {MAIN: '#GRUB_CMDLINE_LINUX="intel_iommu=on"\nGRUB_CMDLINE_LINUX="quiet intel_iommu=on"\n'}),
    ("no-assignment", {MAIN: "GRUB_DEFAULT=0"},
     INTEL, {MAIN: 'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX="intel_iommu=on iommu=pt"\n'}),
    ("grub.d-overrides", {MAIN: 'GRUB_CMDLINE_LINUX="quiet"\n',
                          f"{D}/50-cloudimg-settings.cfg": 'GRUB_CMDLINE_LINUX="console=tty1 console=ttyS0"\n'},
     INTEL, {f"{D}/50-cloudimg-settings.cfg": 'GRUB_CMDLINE_LINUX="console=tty1 console=ttyS0 intel_iommu=on iommu=pt"\n'}),
    ("grub.d-appends", {MAIN: 'GRUB_CMDLINE_LINUX="intel_iommu=on"\n',
                        f"{D}/90-net.cfg": 'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX net.ifnames=0"\n'},
     INTEL, {MAIN: 'GRUB_CMDLINE_LINUX="intel_iommu=on iommu=pt"\n'}),
    ("pci-flags-merge", {MAIN: 'GRUB_CMDLINE_LINUX="pci=realloc"\n'},
     ["pci=realloc", "pci=assign-busses"], {MAIN: 'GRUB_CMDLINE_LINUX="pci=realloc pci=assign-busses"\n'}),
    ("pci-flags-combined", {MAIN: 'GRUB_CMDLINE_LINUX="pci=realloc,assign-busses"\n'},
     ["pci=realloc", "pci=assign-busses"], None),
    ("acs-override-present", {MAIN: 'GRUB_CMDLINE_LINUX="pcie_acs_override=downstream,id:8086:1901"\n'},
     ["pcie_acs_override=id:8086:1901"], None),
]


@pytest.mark.parametrize("before, wanted, after", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_plan_edits_in_place_and_is_idempotent(before, wanted, after):
    plan = boot_config.plan(Grub.parse(before), wanted)
    assert plan.texts == (after or {})
    merged = {**before, **plan.texts}
    again = boot_config.plan(Grub.parse(merged), wanted)
    assert again.texts == {} and set(again.already) == set(wanted)


def test_plan_reports_what_it_cut_and_added():
    plan = boot_config.plan(Grub.parse({MAIN: 'GRUB_CMDLINE_LINUX="intel_iommu=off iommu=pt"\n'}), INTEL)
    assert plan.cut == ("intel_iommu=off",)
    assert plan.add == ("intel_iommu=on",)
    assert plan.already == ("iommu=pt",)


def test_undoing_arg_set_through_a_variable_is_refused():
    before = {MAIN: 'OFF="intel_iommu=off"\nGRUB_CMDLINE_LINUX="$OFF quiet"\n'}
    with pytest.raises(GrubError, match="intel_iommu=off is set through a variable"):
        boot_config.plan(Grub.parse(before), INTEL)


def _setup(kind, tool=None):
    return bootsetup.Setup(kind, (MAIN,), kind != bootsetup.GRUB, tool)


@pytest.mark.parametrize("kind, tool, expect", [
    ("grub", "/usr/sbin/update-grub", [["update-grub"]]),
    ("grub", "/usr/sbin/grub2-mkconfig", [["grub2-mkconfig", "-o", "/boot/grub2/grub.cfg"]]),
    ("grub", "/usr/sbin/grub-mkconfig", [["grub-mkconfig", "-o", "/boot/grub/grub.cfg"]]),
    ("grub", None, [["update-grub"]]),
    ("grub-bls", "/usr/sbin/grubby", [["grubby", "--update-kernel=ALL", "--args", "intel_iommu=on iommu=pt",
                                       "--remove-args", "amd_iommu=off"]]),
    ("proxmox-boot-tool", "/usr/sbin/proxmox-boot-tool", [["proxmox-boot-tool", "refresh"]]),
    ("kernel-install", "/usr/bin/kernel-install", [["kernel-install", "add", "6.1.0-18-amd64",
                                                   "/lib/modules/6.1.0-18-amd64/vmlinuz"]]),
], ids=["debian", "fedora-legacy", "plain-grub", "no-tool-found", "rhel-bls", "proxmox", "systemd-boot"])
def test_regenerate_commands_per_setup(kind, tool, expect):
    assert bootsetup.commands(_setup(kind, tool), INTEL, ["amd_iommu=off"], "6.1.0-18-amd64") == expect


def test_regenerate_runs_the_command_and_reports_its_failure():
    out = io.StringIO()
    boot_config.regenerate(["sh", "-c", "exit 0"], out)
    assert out.getvalue() == "running sh -c exit 0\n"
    with pytest.raises(HostError, match=r"sh -c echo no ESP >&2; exit 3 failed with exit code 3: no ESP"):
        boot_config.regenerate(["sh", "-c", "echo no ESP >&2; exit 3"], io.StringIO())
    with pytest.raises(HostError, match=r"proxmox-boot-tool-absent: cannot run"):
        boot_config.regenerate(["proxmox-boot-tool-absent", "refresh"], io.StringIO())


@pytest.mark.parametrize("text, add, cut, after", [
    ("root=/dev/sda1 quiet\n", ["iommu=pt"], [], "root=/dev/sda1 quiet iommu=pt\n"),
    ("root=/dev/sda1 boot=zfs \n", ["iommu=pt"], [], "root=/dev/sda1 boot=zfs iommu=pt \n"),
    ("amd_iommu=off root=/dev/sda1\n", [], ["amd_iommu=off"], "root=/dev/sda1\n"),
    ("a b c\n", [], ["a", "b", "c"], "\n"),
    ("a b\n", ["c"], ["b"], "a c\n"),
    ("", ["iommu=pt"], [], "iommu=pt\n"),
    ("root=/dev/sda1\n# second line, not read by proxmox-boot-tool: quiet\n", ["iommu=pt"], ["quiet"],
     "root=/dev/sda1 iommu=pt\n# second line, not read by proxmox-boot-tool: quiet\n"),
], ids=["append", "trailing-space-kept", "cut-first", "cut-all", "cut-and-add", "empty-file", "first-line-only"])
def test_kernel_cmdline_file_edits(text, add, cut, after):
    assert KernelCmdline(PATH, text).edit(add, cut) == {PATH: after}
