"""The parts of the lxcloud testbed (``testbed/testbed.py`` is the entry point and holds the
operations: up, down, shape, status).

- :mod:`.base`: settings, constants and small helpers (commands, pid files, atomic writes);
- :mod:`.layout`: what a testbed is: its names, addresses, paths and state file;
- :mod:`.files`: the files it generates (host dirs, sshd config, inventory, ssh config ...);
- :mod:`.net`: bridge, veths and link shaping;
- :mod:`.procs`: the processes in a host's namespaces (find, start detached, stop, measure);
- :mod:`.daemons`: each host's sshd and libvirtd;
- :mod:`.hostinit`: what runs inside a new host before its sshd.

Standard library only: it runs under ``/usr/bin/python3`` as root.
"""
