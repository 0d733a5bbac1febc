"""The handlers of vfalloc's commands, one module per group: `leases` (list, pools, alloc,
release), `domains` (request, start, gc), `install_hook`, `host_show` (host check, iommu-groups,
acs), `host_change` (kernel-args, numvfs, persist, vf-driver) and `fdb` (fdb sync, fdb show).

A handler is `cmd_NAME(args, ctx) -> exit code`: it reads its flags from the parsed arguments,
calls the library with explicit values (never the argparse Namespace), and prints the result.
cli.py builds the one parser and imports a handler's module only when its command runs. Errors
go up to cli.main, which prints them as one line.
"""
