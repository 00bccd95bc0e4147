"""ProfileService: profiles as hashes in the cluster, one event per operation."""
