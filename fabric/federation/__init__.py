"""One fabric over several Ray clusters: each member is an ordinary fabric on its own cluster;
the federation pulls every member's snapshot, runs the same policy over all their sites and
sends each request to the member that holds the site it chose (``fabric federate``)."""
