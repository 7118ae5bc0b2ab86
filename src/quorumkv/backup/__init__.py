"""K3s-style etcd snapshots: naming and records (:mod:`.local`), S3 (:mod:`.s3`), finishing/uploading/pruning
(:mod:`.manager`), the in-server schedule (:mod:`.scheduler`), restore sources (:mod:`.restore_source`) and
progress output (:mod:`.progress`). Sits above the server, observability and client layers, below app/cli."""
