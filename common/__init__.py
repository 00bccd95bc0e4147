"""What several profilemesh services share: settings, key names, the cluster client, server bootstrap."""
