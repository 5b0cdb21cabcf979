"""Ray: the RL roles as actor groups on a cluster, driven by one controller.

``rl`` is the ``repulse rl`` entry (local or Ray); ``cluster`` joins or starts a cluster;
``placement`` plans pools of bundles per role (colocated roles share a pool) and orders them by
node; ``worker`` is what runs in one actor (one rank of a role group, holding the in-process
roles); ``groups`` calls a group with a deadline and names a dead actor; ``roles`` gives the
methods the role protocols over the groups; ``shards`` cuts and merges a step's batches;
``weights`` moves the policy's weights into rollout engines of their own. Ray is an optional
extra, imported only when ``--launch.backend ray`` runs.
"""
