"""The native API every daemon serves (docs/api.md): routes in `app`, rows in `views`, serving in `server`.

Nothing is imported here, so a caller that needs only `auth.node_token` or
the views does not pay for Starlette and hypercorn.
"""
