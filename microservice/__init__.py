"""The credit-score microservice: one FastAPI app, two roles (`SERVICE_ROLE=live|queue`).

`microservice.main:app` is the ASGI app; `microservice.main.create_app(settings)` builds one
for given settings. The domain (`microservice.domain`) generates companies and scores them.
"""
