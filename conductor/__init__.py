"""The conductor: drives pipeline runs (``scantide conductor``, started by ``scantide up``)."""
