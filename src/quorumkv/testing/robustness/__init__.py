"""``quorumkv robustness``: etcd-style robustness testing as a shipped command (docs/reliability.md).

- :mod:`.record` -- what a run records (a KV history for the linearizability checker, every watch stream
  response by response, paginated lists, lease and maintenance calls) and its JSON form;
- :mod:`.watchcheck` -- the watch validators (ordered, unique, atomic, bookmarkable, resumable, reliable) and
  the cross-checks between watches, lists and acknowledged writes;
- :mod:`.traffic` -- the traffic profiles (``kubernetes``, ``etcd``, ``lease-heavy``) against any
  etcd-compatible endpoints;
- :mod:`.faults` -- the fault catalogue and its injectors on a :class:`~quorumkv.testing.cluster.Cluster`;
- :mod:`.runner` -- one run: start the cluster, drive traffic, inject faults, stop, validate, report;
- :mod:`.anomalies` -- planted watch anomalies (test-only) proving each validator can fail.
"""
