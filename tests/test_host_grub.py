"""vfalloc.host.grub and boot_config.plan: shell evaluation of GRUB_CMDLINE_LINUX and in-place,
idempotent edits of grub files as admins and distributions write them."""

from __future__ import annotations

import pytest

from vfalloc.host import grub, boot_config
from vfalloc.host.grub import Grub, GrubError

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
     INTEL, {f"{D}/90-net.cfg": 'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX net.ifnames=0 iommu=pt"\n'}),
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


@pytest.mark.parametrize("present, expect", [
    ({"update-grub"}, ["update-grub"]),
    ({"grubby", "grub2-mkconfig"}, ["grubby", "--update-kernel=ALL", "--args"]),
    ({"grub2-mkconfig"}, ["grub2-mkconfig", "-o", "/boot/grub2/grub.cfg"]),
    ({"grub-mkconfig"}, ["grub-mkconfig", "-o", "/boot/grub/grub.cfg"]),
    (set(), None),
], ids=["debian", "fedora", "opensuse", "plain-grub", "none"])
def test_regenerate_command_per_distro(present, expect):
    assert boot_config.regenerate_command(lambda name: f"/usr/sbin/{name}" if name in present else None) == expect


def test_grubby_gets_the_arguments():
    assert boot_config.full_command(["grubby", "--update-kernel=ALL", "--args"], INTEL) == [
        "grubby", "--update-kernel=ALL", "--args", "intel_iommu=on iommu=pt"]
