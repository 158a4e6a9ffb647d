"""`kyma test-upstream`: the fake model behind a real HTTP server with fault injection."""
