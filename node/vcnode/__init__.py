"""The node package: what runs on every node of a vCluster, on every platform.

Cloud-init's first-boot data carries it (a directory application, `/usr/libexec/vcluster/vcnode.pyz/`)
and runs `bootstrap`; the reconciler ships it but never imports it. Standard library only; it
calls a cloud's API through that cloud's own CLI, never with hand-signed requests.

- `bootstrap`: by role, the node's first boot (packages, hostname, munge key, mounts, config,
  daemons, readiness report).
- `channel`: the versioned day-to-day config (slurm.conf, gres, groups, the Spack environment)
  in the site's own store, and the nodes' reports of the version they run.
- `platforms`: where a node finds its store, its secrets and its mounts on each platform.
- `cloudinit`: the part of cloud-init the local runtime needs (write_files, runcmd).
- `localhost`: the local platform's `slurm` runtime, the machine itself: one network namespace
  per site with a bridge, one set of namespaces per node.
"""
