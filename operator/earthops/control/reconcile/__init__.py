"""Pure decisions of the control plane: resource -> desired child objects; child state -> execution.

No I/O here: the handlers (cluster) and the embedded executor do the applying and the reading."""
