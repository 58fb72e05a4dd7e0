-- wrk script: the call a client makes to the app itself (sidecar mode).
wrk.method = "POST"
wrk.path = "/orders"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"sku": "A-1", "quantity": 2}'
