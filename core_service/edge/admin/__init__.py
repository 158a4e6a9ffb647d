"""AdminService: operators' actions, in groups by what they act on, composed by delegation in
`service.py`. The admin token is checked for every method by the AdminToken interceptor."""
