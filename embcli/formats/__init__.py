"""One module per artifact kind, each behind the `ModelFile` interface of `base`."""
